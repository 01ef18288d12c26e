"""String enums, so no raw status or type strings are scattered through the code."""

from enum import StrEnum


class EventType(StrEnum):
    """Every lifecycle event type of contract section 1."""

    SYNC_CREATED = "sync.created"
    SYNC_UPDATED = "sync.updated"
    SYNC_DISABLED = "sync.disabled"
    SYNC_ENABLED = "sync.enabled"
    SYNC_DELETED = "sync.deleted"
    RUN_STARTED = "sync.run.started"
    RUN_SUCCEEDED = "sync.run.succeeded"
    RUN_FAILED = "sync.run.failed"
    CREDENTIAL_FAILED = "sync.credential.failed"
    CREDENTIAL_RECOVERED = "sync.credential.recovered"
    RATE_LIMITED = "sync.rate_limited"
    BACKFILL_STARTED = "sync.backfill.started"
    BACKFILL_PROGRESSED = "sync.backfill.progressed"
    BACKFILL_COLLECTION_COMPLETED = "sync.backfill.collection_completed"
    PROVIDER_INCIDENT_OPENED = "provider.incident.opened"
    PROVIDER_INCIDENT_RESOLVED = "provider.incident.resolved"

    @property
    def is_provider_event(self) -> bool:
        return self.startswith("provider.")  # a str already: `.value` is a slow descriptor


class SyncStatus(StrEnum):
    """The seed's `status`: whether the sync is switched on."""

    ACTIVE = "active"
    DISABLED = "disabled"


class HealthStatus(StrEnum):
    """`health.status`; RANK orders them worst-last so `max` picks the worst."""

    HEALTHY = "healthy"
    INITIALIZING = "initializing"
    WARN = "warn"
    ERROR = "error"
    PAUSED = "paused"

    @property
    def rank(self) -> int:
        return _HEALTH_RANK[self]


_HEALTH_RANK = {
    HealthStatus.HEALTHY: 0,
    HealthStatus.INITIALIZING: 1,
    HealthStatus.WARN: 2,
    HealthStatus.ERROR: 3,
    HealthStatus.PAUSED: 4,
}


class Outcome(StrEnum):
    """The `outcome` label of `syncmon_events_total`."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    IGNORED = "ignored"
    INVALID = "invalid"


class CredentialStatus(StrEnum):
    """Whether the sync's credential last worked."""

    VALID = "valid"
    FAILED = "failed"
