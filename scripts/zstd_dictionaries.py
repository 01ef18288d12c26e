"""Trains the zstd dictionaries stored views are compressed with, from simulated views.

Run from the repository root: `.venv/bin/python scripts/zstd_dictionaries.py TAG`. It writes
`monitor/store/dictionaries/{facts,seed}-TAG.zdict`. A published dictionary never changes:
values written with it must stay readable, so a retrained one gets a new tag in
`monitor/store/codec.py`. The samples come from a simulator seed and fleet size that the
benchmarks do not use, so their figures do not flatter a dictionary fitted to their own data.
"""

from __future__ import annotations

import random
import sys
from datetime import UTC, datetime
from pathlib import Path

import zstandard

from consumers.decode import RawMessage, decode
from monitor.fold import Position, step
from monitor.simulate import history
from monitor.store.syncs import FACTS_PART, STORED_SEED
from monitor.views import SyncView

OUT = Path("monitor/store/dictionaries")
SYNCS, EVENTS, SEED = 3_000, 90_000, 20_261_127
SAMPLES = 20_000
SIZE = 4096  # bytes: past this the facts shrank by under 2% more, and each sweep loads it once


def samples() -> tuple[list[bytes], list[bytes]]:
    """Facts and seed documents of views at every stage of their lives, as `put_many` dumps them."""
    pick = random.Random(SEED)
    views: dict[str, SyncView] = {}
    facts: list[bytes] = []
    seeds: list[bytes] = []
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for n, m in enumerate(history(SYNCS, EVENTS, SEED, start, 1.0)):
        event = decode(RawMessage("sync.lifecycle", 0, n, m.key, m.value, list(m.headers)))
        view = step(views.get(event.subject), event, Position(0, n)).view
        if not isinstance(view, SyncView):
            continue
        views[view.id] = view
        if pick.random() < SAMPLES / EVENTS:
            facts.append(view.model_dump_json(include=FACTS_PART, exclude_defaults=True).encode())
            seeds.append(view.model_dump_json(include=STORED_SEED, exclude_defaults=True).encode())
    return facts, seeds


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print(__doc__, file=sys.stderr)
        return 2
    tag = argv[0]
    facts, seeds = samples()
    OUT.mkdir(parents=True, exist_ok=True)
    for name, docs in (("facts", facts), ("seed", seeds)):
        trained = zstandard.train_dictionary(SIZE, docs, level=3, threads=1)
        path = OUT / f"{name}-{tag}.zdict"
        with path.open("xb") as out:  # a published dictionary is never overwritten
            out.write(trained.as_bytes())
        print(f"{path}: {len(trained.as_bytes())} B from {len(docs)} documents")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
