"""Static catalogs and the seeded fleet of simulated syncs used by `monitor.simulate`."""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from monitor.enums import SyncStatus

# provider -> (display name, weight, collections, (allowed_requests, interval))
PROVIDERS: dict[str, tuple[str, int, tuple[str, ...], tuple[int, int]]] = {
    "stripe": (
        "Stripe",
        20,
        (
            "customer",
            "subscription",
            "invoice",
            "charge",
            "payment_intent",
            "product",
            "price",
            "refund",
            "dispute",
        ),
        (100, 1),
    ),
    "hubspot": (
        "HubSpot",
        18,
        ("contact", "company", "deal", "ticket", "owner", "engagement", "line_item"),
        (150, 10),
    ),
    "salesforce": (
        "Salesforce",
        15,
        ("account", "contact", "lead", "opportunity", "case", "user", "task"),
        (1000, 60),
    ),
    "github": (
        "GitHub",
        10,
        ("repository", "issue", "pull_request", "commit", "release", "workflow_run"),
        (5000, 3600),
    ),
    "shopify": (
        "Shopify",
        9,
        ("order", "product", "customer", "inventory_item", "fulfillment", "refund"),
        (40, 1),
    ),
    "intercom": ("Intercom", 7, ("contact", "conversation", "company", "admin", "tag"), (1000, 60)),
    "zendesk": (
        "Zendesk",
        7,
        ("ticket", "user", "organization", "group", "satisfaction_rating"),
        (700, 60),
    ),
    "jira": ("Jira", 6, ("issue", "project", "user", "sprint", "worklog"), (100, 60)),
    "linear": ("Linear", 4, ("issue", "project", "team", "user", "cycle"), (1500, 3600)),
    "close": ("Close", 2, ("lead", "contact", "opportunity", "activity"), (40, 1)),
    "airtable": ("Airtable", 2, ("base", "table", "record"), (5, 1)),
}

COMPANIES = (
    "Choam Corp",
    "Tyrell Corp",
    "Initech",
    "Hooli",
    "Acme Inc",
    "Globex",
    "Umbrella Corp",
    "Soylent",
    "Wayne Enterprises",
    "Stark Industries",
    "Cyberdyne Systems",
    "Wonka Industries",
    "Vandelay Industries",
    "Dunder Mifflin",
    "Pied Piper",
    "Aperture Science",
    "Massive Dynamic",
    "Oscorp",
    "Monsters Inc",
    "Gringotts",
    "Buy n Large",
    "Weyland-Yutani",
    "Black Mesa",
    "Prestige Worldwide",
    "Sterling Cooper",
    "Bluth Company",
    "Krusty Krab",
    "Los Pollos Hermanos",
    "Nakatomi Trading",
    "Ollivanders",
    "Planet Express",
    "Rekall",
    "Spacely Sprockets",
    "Virtucon",
    "Wernham Hogg",
    "Zorg Industries",
    "Gekko & Co",
    "Hanso Foundation",
    "InGen",
    "Kramerica",
    "Lacuna Inc",
    "MomCorp",
    "Omni Consumer Products",
    "Paper Street Soap",
    "Quartz Analytics",
    "Sirius Cybernetics",
    "Tessier-Ashpool",
    "Yoyodyne",
    "Encom",
    "Duff Brewing",
)

ENVIRONMENTS = (("Production", 10), ("Staging", 3), ("Sandbox", 2), ("EU", 2), ("US", 2))

TEAMS = ("data-platform", "growth", "finance-ops", "revops", "support-eng", "analytics")
PEOPLE = ("alice", "bob", "carol", "dmitri", "erin", "farah", "gus", "hiro")

DISABLE_REASONS = (
    "paused by user",
    "billing: subscription past due",
    "paused for provider maintenance",
    "too many consecutive failures",
    "org requested pause during migration",
)
ENABLE_REASONS = (
    "resumed by user",
    "billing resolved",
    "provider maintenance finished",
    "migration done",
)

INCIDENT_NOTES = (
    "Investigating elevated API error rates",
    "Identified: upstream returns intermittent 502/503",
    "Webhook delivery delayed",
    "Degraded performance on list endpoints",
    "A fix has been deployed; monitoring",
    "Authentication service partially unavailable",
)

# code -> (message template, http_status or None, retryable)
RUN_ERRORS: tuple[tuple[str, str, int | None, bool], ...] = (
    ("provider_unavailable", "{p} API returned 502 Bad Gateway", 502, True),
    ("provider_unavailable", "{p} API returned 503 Service Unavailable", 503, True),
    ("timeout", "request to {p} timed out after 30s", None, True),
    ("rate_limited", "{p} API returned 429 Too Many Requests", 429, True),
    ("forbidden", "{p} denied access to the resource (missing scope)", 403, False),
    ("schema_mismatch", "unexpected field type in {p} response", None, False),
    ("internal_error", "sync worker crashed: connection reset by peer", None, True),
)

ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
HEX = "0123456789abcdef"
PEM_BEGIN, PEM_END = "-----BEGIN RSA PRIVATE KEY-----", "-----END RSA PRIVATE KEY-----"
MASKED_WORDS = ("secret", "password", "token", "api_key", "private_key")


class Profile(StrEnum):
    """How a simulated sync behaves, so a demo shows every health state."""

    HEALTHY = "healthy"
    FLAKY = "flaky"
    FAILING = "failing"
    STUCK = "stuck"
    CREDENTIAL_BROKEN = "credential_broken"
    PAUSED = "paused"


# a shuffled deck of 20 per round keeps small fleets varied (30% sick)
PROFILE_DECK = (
    (Profile.HEALTHY,) * 14
    + (Profile.FLAKY,) * 2
    + (Profile.FAILING, Profile.STUCK, Profile.CREDENTIAL_BROKEN, Profile.PAUSED)
)


def new_uuid(rng: random.Random) -> str:
    """Format 128 seeded random bits as a version-4 UUID, so ids are reproducible."""
    n = rng.getrandbits(128)
    n = (n & ~(0xF000 << 64) & ~(0xC000 << 48)) | (0x4000 << 64) | (0x8000 << 48)
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_TOK_TABLES: dict[str, bytes] = {}


def tok(rng: random.Random, n: int, alphabet: str = ALNUM) -> str:
    """Random token text, so secrets look real; byte translation keeps 10k syncs fast."""
    table = _TOK_TABLES.get(alphabet)
    if table is None:
        table = _TOK_TABLES[alphabet] = bytes(ord(alphabet[i % len(alphabet)]) for i in range(256))
    return rng.randbytes(n).translate(table).decode()


def seed_time(dt: datetime) -> str:
    """The seed document's `YYYY-MM-DD HH:MM:SS` form, as the engine writes credentials."""
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def credential_properties(rng: random.Random, provider: str, slug: str) -> dict[str, Any]:
    """Provider-shaped credential properties with raw secrets that syncmon must mask."""
    if provider == "stripe":
        test = rng.random() < 0.2
        return {
            "kind": "stripe_key",
            "name": "TEST ACCOUNT" if test else f"{slug.upper()} LIVE",
            "secret": f"sk_{'test' if test else 'live'}_{tok(rng, 32)}",
            "test": test,
        }
    if provider == "hubspot":
        return {
            "kind": "hubspot_oauth2",
            "hub_id": rng.randint(1_000_000, 49_999_999),
            "access_token": "CO" + tok(rng, 62, B64),
            "refresh_token": "na1-" + "-".join(tok(rng, k, HEX) for k in (4, 4, 4, 4, 12)),
        }
    if provider == "salesforce":
        return {
            "kind": "salesforce_oauth2",
            "instance_url": f"https://{slug}.my.salesforce.com",
            "client_id": "3MVG9" + tok(rng, 80),
            "client_secret": tok(rng, 64, HEX).upper(),
            "access_token": f"00D{tok(rng, 12)}!{tok(rng, 96, ALNUM + '._')}",
            "refresh_token": "5Aep861" + tok(rng, 80, ALNUM + "._"),
        }
    if provider == "github":
        body = "\n".join(tok(rng, 64, B64) for _ in range(6))
        return {
            "kind": "github_app",
            "app_id": rng.randint(100_000, 999_999),
            "installation_id": rng.randint(10_000_000, 99_999_999),
            "private_key": f"{PEM_BEGIN}\n{body}\n{PEM_END}",
        }
    if provider == "shopify":
        return {
            "kind": "shopify_access_token",
            "shop_domain": f"{slug}.myshopify.com",
            "access_token": "shpat_" + tok(rng, 32, HEX),
        }
    if provider == "intercom":
        return {
            "kind": "intercom_oauth2",
            "workspace_id": tok(rng, 8, string.ascii_lowercase + string.digits),
            "access_token": "dG9rOj" + tok(rng, 54, B64),
        }
    if provider == "zendesk":
        return {
            "kind": "zendesk_api_token",
            "subdomain": slug,
            "email": f"ops@{slug}.com",
            "api_key": tok(rng, 40),
        }
    if provider == "jira":
        if rng.random() < 0.3:
            return {
                "kind": "jira_server_basic",
                "base_url": f"https://jira.{slug}.com",
                "username": "svc-sync",
                "password": tok(rng, 20, ALNUM + "!#%&*"),
            }
        return {
            "kind": "jira_cloud",
            "site": f"https://{slug}.atlassian.net",
            "email": f"integrations@{slug}.com",
            "api_token": "ATATT3xFfGF0" + tok(rng, 60),
        }
    if provider == "linear":
        return {"kind": "linear_api_key", "api_key": "lin_api_" + tok(rng, 40)}
    if provider == "close":
        return {"kind": "close_api_key", "api_key": f"api_{tok(rng, 22)}.{tok(rng, 22)}"}
    return {
        "kind": "airtable_pat",
        "personal_access_token": f"pat{tok(rng, 14)}.{tok(rng, 64, HEX)}",
    }


def secret_keys(properties: dict[str, Any]) -> list[str]:
    """Names of properties the contract says must be masked (for tests and rotation)."""
    return [k for k in properties if any(w in k.lower() for w in MASKED_WORDS)]


@dataclass(slots=True)
class Org:
    """A customer organisation: several syncs share its id, name and streams."""

    id: str
    company: str
    slug: str
    streams: list[str]


@dataclass(slots=True)
class SimSync:
    """One simulated sync: the seed's fields plus how it misbehaves."""

    id: str
    provider: str
    org: Org
    stream_id: str
    name: str
    env: str
    collection_ids: list[str]
    rate_limit: dict[str, int]
    credential: dict[str, Any]
    max_age_days: int | None
    sync_frequency: str
    metadata: dict[str, Any]
    profile: Profile
    status: SyncStatus = SyncStatus.ACTIVE

    def created_data(self) -> dict[str, Any]:
        """The `sync.created` data (the encoder fills created_at/updated_at with the event time)."""
        return {
            "id": self.id,
            "provider": self.provider,
            "stream_id": self.stream_id,
            "name": self.name,
            "status": self.status.value,
            "org_id": self.org.id,
            "collection_ids": list(self.collection_ids),
            "rate_limit": dict(self.rate_limit),
            "credential_id": self.credential["id"],
            "credential": _deep_copy(self.credential),
            "max_age_days": self.max_age_days,
            "sync_frequency": self.sync_frequency,
            "metadata": dict(self.metadata),
        }


def _deep_copy(d: dict[str, Any]) -> dict[str, Any]:
    """Copy nested dicts so later patches to the sync never mutate an emitted event."""
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in d.items()}


class Fleet:
    """A seeded population of syncs across a few orgs, reproducible from the seed alone."""

    def __init__(self, size: int, seed: int, epoch: datetime | None = None) -> None:
        if size < 0:
            raise ValueError("fleet size must be >= 0")
        self.rng = random.Random(seed)
        self.epoch = epoch if epoch is not None else datetime(2024, 1, 1, tzinfo=UTC)
        rng = self.rng
        n_orgs = max(1, min(len(COMPANIES), round(max(size, 1) ** 0.5 / 1.5)))
        self.orgs = [self._new_org(c) for c in rng.sample(COMPANIES, n_orgs)]
        # Zipf-ish: a few big orgs, a long tail of small ones
        self._org_weights = [1.0 / (i + 1) for i in range(n_orgs)]
        self._providers = list(PROVIDERS)
        self._provider_weights = [PROVIDERS[p][1] for p in self._providers]
        self._envs = [e for e, _ in ENVIRONMENTS]
        self._env_weights = [w for _, w in ENVIRONMENTS]
        self._deck: list[Profile] = []
        self.syncs: list[SimSync] = [self.new_sync() for _ in range(size)]

    def _new_org(self, company: str) -> Org:
        """Make an org with 1-3 streams its syncs write to."""
        slug = "".join(ch for ch in company.lower() if ch.isalnum())
        streams = [new_uuid(self.rng) for _ in range(self.rng.randint(1, 3))]
        return Org(new_uuid(self.rng), company, slug, streams)

    def _next_profile(self) -> Profile:
        """Deal profiles from shuffled decks so every 20 syncs carry the same mix."""
        if not self._deck:
            self._deck = list(PROFILE_DECK)
            self.rng.shuffle(self._deck)
        return self._deck.pop()

    @property
    def providers(self) -> list[str]:
        """Providers with at least one sync, in catalog order (incident subjects)."""
        used = {s.provider for s in self.syncs}
        return [p for p in PROVIDERS if p in used]

    def new_sync(self, org: Org | None = None) -> SimSync:
        """Draw one more sync (also used to replace a deleted one)."""
        rng = self.rng
        if org is None:
            org = rng.choices(self.orgs, self._org_weights)[0]
        provider = rng.choices(self._providers, self._provider_weights)[0]
        display, _, collections, (allowed, interval) = PROVIDERS[provider]
        env = rng.choices(self._envs, self._env_weights)[0]
        cols = rng.sample(collections, rng.randint(1, min(5, len(collections))))
        if rng.random() < 0.25:
            allowed = max(1, allowed // 2)
        cred_id = new_uuid(rng)
        cred_created = self.epoch - timedelta(seconds=rng.uniform(86_400, 600 * 86_400))
        cred_updated = cred_created + timedelta(seconds=rng.uniform(0, 30 * 86_400))
        custom_app = rng.random() < 0.15
        credential: dict[str, Any] = {
            "id": cred_id,
            "provider": provider,
            "properties": credential_properties(rng, provider, org.slug),
            "oauth_app_id": new_uuid(rng) if custom_app else None,
            "oauth_app": {"kind": "custom" if custom_app else "sequin"},
            "metadata": rng.choice(({"custom_credential_property": 42}, {}, {"rotated_by": "ci"})),
            "created_at": seed_time(cred_created),
            "updated_at": seed_time(min(cred_updated, self.epoch)),
        }
        metadata: dict[str, Any] = {}
        for key in rng.sample(
            ("team", "owner", "cost_center", "custom_property", "tier"), rng.randint(0, 3)
        ):
            metadata[key] = metadata_value(rng, key, org.slug)
        return SimSync(
            id=new_uuid(rng),
            provider=provider,
            org=org,
            stream_id=rng.choice(org.streams),
            name=f"{org.company} - {display} {env}",
            env=env,
            collection_ids=[f"{provider}:{c}" for c in cols],
            rate_limit={
                "allowed_requests": allowed,
                "interval": interval,
                "max_concurrent_requests": rng.choice((0, 0, 0, 2, 4, 8)),
            },
            credential=credential,
            max_age_days=None if rng.random() < 0.4 else rng.choice((30, 90, 180, 365, 730)),
            sync_frequency="continuous" if rng.random() < 0.8 else "4h",
            metadata=metadata,
            profile=self._next_profile(),
        )


def metadata_value(rng: random.Random, key: str, slug: str) -> Any:
    """A plausible value for a metadata key (also used by simulated updates)."""
    if key == "team":
        return rng.choice(TEAMS)
    if key == "owner":
        return f"{rng.choice(PEOPLE)}@{slug}.com"
    if key == "cost_center":
        return f"CC-{rng.randint(1000, 9999)}"
    if key == "tier":
        return rng.choice(("gold", "silver", "bronze"))
    return rng.randint(1, 100)
