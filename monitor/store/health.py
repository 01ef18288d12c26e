"""Key family `{prefix}:health:{id}`: the last evaluated health of each sync."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, create_model

from monitor.enums import HealthStatus
from monitor.health import Assessment, EpochMs, Health
from monitor.store.base import Client
from monitor.views import trusted

TEMPLATE = "{prefix}:health:{id}"
NOT_STORED = {"checks", "credential", "provider", "sync_id"}
# Deletes a stored health (KEYS[1]) and removes the sync (ARGV[1]) from the health index under
# the provider stored with it: each ARGV pair after the first is an index key around the provider.
DELETE_INDEXED = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
redis.call('DEL', KEYS[1])
local ok, stored = pcall(cjson.decode, raw)
local row = ok and type(stored) == 'table' and stored.m
local p = type(row) == 'table' and type(row.p) == 'string' and row.p or ''
for i = 2, #ARGV, 2 do redis.call('SREM', ARGV[i] .. p .. ARGV[i + 1], ARGV[1]) end
return 1
"""


class SyncRow(BaseModel):
    """What `/metrics` needs of a sync beyond its health, kept beside it with short keys so
    a scrape reads one small value per sync (and no view)."""

    model_config = ConfigDict(frozen=True)

    p: str | None = None  # provider
    o: str | None = None  # org_id
    n: str | None = None  # name
    f: str | None = None  # sync_frequency
    ls: EpochMs | None = None  # last success
    le: EpochMs | None = None  # last event
    bc: int = 0  # initial backfill complete
    br: float | None = None  # backfill progress ratio
    cf: int = 0  # consecutive failures
    cr: int = 0  # credential failed
    ck: dict[str, str] = Field(default_factory=dict)  # checks that are not healthy


class StoredHealth(Health):
    """The stored form: health plus its metrics row."""

    m: SyncRow | None = None


class _Indexed(BaseModel):
    model_config = ConfigDict(frozen=True)

    p: str | None = None  # the provider the health is indexed under


class LastHealth(BaseModel):
    """A stored health as the engine reads it back: the history an evaluation carries on
    (as in `Health`) and, of the row, the provider it is indexed under."""

    model_config = ConfigDict(frozen=True)

    status: HealthStatus
    evaluated_at: EpochMs
    in_status_since: EpochMs | None = None
    last_healthy_at: EpochMs | None = None
    erroring_since: EpochMs | None = None
    pending: HealthStatus | None = None
    pending_since: EpochMs | None = None
    transitions: int = 0
    m: _Indexed | None = None


Stored = StoredHealth | LastHealth


class HealthViews:
    """Evaluated health (status and history), apart from the view: it depends on the clock."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._head = TEMPLATE.format(prefix=prefix, id="")  # keys are this and the id

    def key(self, sync_id: str) -> str:
        return self._head + sync_id

    def keys(self, sync_ids: list[str]) -> list[str]:
        head = self._head
        return [head + i for i in sync_ids]

    @staticmethod
    def parse(sync_id: str, raw: bytes | str | None) -> StoredHealth | None:
        if raw is None:
            return None
        values: dict[str, Any] = pydantic_core.from_json(raw)
        values["sync_id"] = sync_id
        return StoredHealth.model_validate(values)

    @staticmethod
    def parse_last(raw: bytes | str | None) -> LastHealth | None:
        """The history of a stored health, for a sweep: a third of the cost of `parse`."""
        return None if raw is None else LastHealth.model_validate_json(raw)

    def get_many(self, client: Client, sync_ids: list[str]) -> list[StoredHealth | None]:
        if not sync_ids:
            return []
        raws = client.mget([self.key(i) for i in sync_ids])
        return [self.parse(i, r) for i, r in zip(sync_ids, raws, strict=True)]

    def put(self, pipe: Client, health: Health, row: SyncRow | None = None) -> None:
        """Stores the status, its history and the metrics row; what derives from the view,
        the incidents and the clock (checks, credential, provider) is recomputed when read."""
        pipe.set(self.key(health.sync_id), _dump({**health.__dict__, "m": row}))

    @staticmethod
    def dump(a: Assessment, row: SyncRow | None) -> str:
        """What `put` stores for the health of this assessment, without rendering its checks."""
        values = {
            "status": a.status,
            "evaluated_at": a.evaluated_at,
            "in_status_since": a.in_status_since,
            "last_healthy_at": a.last_healthy_at,
            "erroring_since": a.erroring_since,
            "pending": a.pending,
            "pending_since": a.pending_since,
            "transitions": a.transitions,
            "m": row,
        }
        return trusted(_Form, values, _FORM_FIELDS).model_dump_json(exclude_defaults=True)

    def delete(self, pipe: Client, sync_id: str) -> None:
        pipe.delete(self.key(sync_id))

    def delete_indexed(
        self, pipe: Client, sync_id: str, index_key: Callable[[str, str], str]
    ) -> None:
        """Deletes the health and its index entry (`index_key(provider, status)`) under the
        provider stored with it, read by Redis: a caller's MULTI cannot read it first."""
        around: list[str] = []
        for status in HealthStatus:
            before, after = index_key("\0", status.value).split("\0")
            around += (before, after)
        pipe.eval(DELETE_INDEXED, 1, self.key(sync_id), sync_id, *around)


# The stored fields alone, in StoredHealth's order: what `dump` serializes with no `exclude`.
_Form: type[BaseModel] = create_model(
    "StoredForm",
    __config__=ConfigDict(frozen=True),
    **{
        name: (f.annotation, f)
        for name, f in StoredHealth.model_fields.items()
        if name not in NOT_STORED
    },  # type: ignore[call-overload]
)
_FORM_FIELDS = set(_Form.model_fields)


def _dump(values: dict[str, Any]) -> str:
    stored = trusted(StoredHealth, values)
    return stored.model_dump_json(exclude=NOT_STORED, exclude_defaults=True)
