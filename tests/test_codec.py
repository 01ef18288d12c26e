"""Stored values: every tag reads back, old values stay readable, dictionaries never change."""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import sys
import threading
import zipfile
import zlib
from pathlib import Path

import pytest

from monitor.store import codec
from monitor.store.codec import (
    DEFLATE_DICTIONARIES,
    DEFLATED_FACTS,
    DEFLATED_SEED,
    FACTS,
    OLD_FACTS,
    SEED,
    ZSTD_DICTIONARIES,
    pack,
    unpack,
)

ROOT = Path(__file__).resolve().parents[1]
FACTS_DOC = (
    b'{"name":"Stripe Production","provider":"stripe","org_id":"org_1","collection_ids":'
    b'["customer","invoice"],"last_event_at":1764284512.123,"applied":{"sequence":7,'
    b'"event_ids":["AbCdEfGh"],"offsets":{"2":991},"partition":2}}'
)
SEED_DOC = b'{"credential":{"kind":"***********"},"metadata":{"team":"billing"}}'

# Published dictionaries: a value written with one must read back forever, so a dictionary
# file may never change; retraining means a new tag (scripts/zstd_dictionaries.py).
PUBLISHED = {
    "facts-4.zdict": "16b5eb4aecdeced7e19dd56cf10e39bfbb8ede730bf29ecc423f348ba93463f9",
    "seed-4.zdict": "5266b04a544c6c4cabe14ca2ba970b53afb20b1747af3baf2e3a36d06cf01797",
}


@pytest.mark.parametrize("tag", [SEED, FACTS, DEFLATED_SEED, DEFLATED_FACTS, OLD_FACTS])
@pytest.mark.parametrize("document", [FACTS_DOC, SEED_DOC, b"{}"])
def test_every_tag_reads_back_what_it_packed(tag: bytes, document: bytes) -> None:
    stored = pack(tag, document)
    assert stored[:1] == tag
    assert unpack(stored) == document
    assert unpack(pack(tag, document.decode())) == document


def test_new_values_are_zstd_and_smaller_than_deflate() -> None:
    assert {SEED, FACTS} == set(ZSTD_DICTIONARIES)
    assert len(pack(FACTS, FACTS_DOC)) < len(pack(DEFLATED_FACTS, FACTS_DOC))


def test_plain_json_is_read_as_it_is() -> None:
    assert unpack(FACTS_DOC) == FACTS_DOC


@pytest.mark.parametrize(
    ("stored_hex", "document"),
    [
        # Bytes an earlier version wrote (deflate, tags 1 and 3), frozen here as literals.
        (
            "03ab8665c86070a9a280c8bf400f2065db62b034500c6b5899eb20878a516d2d00",
            b'{"name":"Stripe Production","provider":"stripe","applied":{"sequence":7,'
            b'"partition":2}}',
        ),
        ("01ab460b132cbe46f5446d2d00", b'{"credential":{"kind":"***********"},"metadata":{}}'),
    ],
)
def test_values_written_by_the_deflate_versions_stay_readable(
    stored_hex: str, document: bytes
) -> None:
    assert unpack(bytes.fromhex(stored_hex)) == document


@pytest.mark.parametrize(("name", "digest"), sorted(PUBLISHED.items()))
def test_published_dictionaries_never_change(name: str, digest: str) -> None:
    data = (ROOT / "monitor" / "store" / "dictionaries" / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest
    assert name in ZSTD_DICTIONARIES.values()


def test_threads_pack_and_unpack_at_once() -> None:
    """zstd contexts are per thread: shared ones would corrupt values under concurrency."""
    failures: list[str] = []

    def work(n: int) -> None:
        for i in range(2000):
            doc = FACTS_DOC.replace(b"991", str(n * 10_000 + i).encode())
            if unpack(pack(FACTS, doc)) != doc or unpack(pack(SEED, SEED_DOC)) != SEED_DOC:
                failures.append(f"thread {n} item {i}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_the_built_package_ships_the_dictionaries(tmp_path: Path) -> None:
    """`pip install .` (the Dockerfile) must carry the dictionaries, or nothing reads a value.

    Built from a copy of what the Dockerfile copies, so no build directory lands in the tree.
    """
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    for package in ("monitor", "consumers"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("syncmon-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for name in ZSTD_DICTIONARIES.values():
        assert f"monitor/store/dictionaries/{name}" in names


def _zstd_run_length_frame(size: int) -> bytes:
    """A valid zstd frame of `size` spaces in 128 KiB run-length blocks: 4 bytes per block."""
    block = 128 * 1024
    frame = struct.pack("<I", 0xFD2FB528) + bytes([(3 << 6) | (1 << 5)]) + struct.pack("<Q", size)
    count = size // block
    for i in range(count):
        header = (1 if i == count - 1 else 0) | (1 << 1) | (block << 3)
        frame += header.to_bytes(3, "little") + b" "
    return frame


def test_a_value_that_would_inflate_past_the_limit_is_refused() -> None:
    """A damaged or planted value must not make every reader allocate a GiB (zstd can expand
    32 KiB to 1 GiB): unpack refuses it from the size its frame declares."""
    stored = FACTS + _zstd_run_length_frame(1 << 30)
    assert len(stored) < 40_000
    with pytest.raises(ValueError, match="inflates past"):
        unpack(stored)
    fits = FACTS + _zstd_run_length_frame(1 << 20)
    assert unpack(fits) == b" " * (1 << 20)


def test_a_deflated_value_that_would_inflate_past_the_limit_is_refused() -> None:
    deflater = zlib.compressobj(
        9, zlib.DEFLATED, -12, 4, zdict=DEFLATE_DICTIONARIES[DEFLATED_FACTS]
    )
    body = deflater.compress(b" " * (codec.MAX_DOCUMENT + 1)) + deflater.flush()
    with pytest.raises(ValueError, match="inflates past"):
        unpack(DEFLATED_FACTS + body)
