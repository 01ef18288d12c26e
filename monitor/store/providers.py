"""Key family `{prefix}:provider:{name}` plus the set of known providers."""

from __future__ import annotations

from monitor.store.base import Client, text
from monitor.views import ProviderView

TEMPLATE = "{prefix}:provider:{name}"
SET_TEMPLATE = "{prefix}:providers"


class ProviderViews:
    """Provider views (open incidents); few of them, so listing all is cheap."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.set_key = SET_TEMPLATE.format(prefix=prefix)

    def key(self, name: str) -> str:
        return TEMPLATE.format(prefix=self.prefix, name=name)

    def get_many(self, client: Client, names: list[str]) -> list[ProviderView | None]:
        if not names:
            return []
        raws = client.mget([self.key(n) for n in names])
        return [None if r is None else ProviderView.model_validate_json(r) for r in raws]

    def put(self, pipe: Client, view: ProviderView) -> None:
        pipe.set(self.key(view.name), view.model_dump_json(exclude_defaults=True))
        pipe.sadd(self.set_key, view.name)

    def all(self, client: Client) -> dict[str, ProviderView]:
        names = sorted(text(n) for n in client.smembers(self.set_key))
        views = self.get_many(client, names)
        return {n: v for n, v in zip(names, views, strict=True) if v is not None}
