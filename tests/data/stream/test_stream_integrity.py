"""Corrupt, truncated and missing shards: raise naming the shard, or skip and count it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _stream_util import all_cell_ids, cell_ids, cfg

from scforge.data.shard import ShardFormatError, load_manifest, read_shards
from scforge.data.stream import ShardStream, StatefulLoader

BAD = "shard-000002.tar"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _bad_cells(shards: Path) -> set[str]:
    return {c["cell_id"] for c in read_shards(shards) if c["shard"] == BAD}


@pytest.mark.parametrize(("damage", "verify"), [(_flip, "first"), (_flip, "always"),
                                                (_truncate, "first"), (_truncate, "never")])
def test_raise_names_the_shard(cb_shards, tmp_path, damage, verify):
    shards = _copy(cb_shards, tmp_path / "s")
    damage(shards / BAD)
    stream = ShardStream(shards, cfg(verify=verify))
    with pytest.raises(ShardFormatError, match=BAD):
        list(stream)


@pytest.mark.parametrize(("damage", "verify"), [(_flip, "first"), (_truncate, "never")])
def test_skip_counts_the_shard_and_delivers_the_rest(cb_shards, tmp_path, damage, verify):
    bad = _bad_cells(cb_shards)
    shards = _copy(cb_shards, tmp_path / "s")
    damage(shards / BAD)
    seen, lengths, skipped = [], set(), set()
    for rank in (0, 1):
        stream = ShardStream(shards, cfg(verify=verify, on_error="skip"), rank=rank,
                             world_size=2)
        batches = list(stream)
        lengths.add(len(batches))
        assert len(batches) == len(stream)  # batch counts stay equal: no DDP hang
        assert stream.metrics["skipped_shards"] == len(stream.skipped_shards)
        skipped |= {Path(p).name for p in stream.skipped_shards}
        seen += cell_ids(batches)
    assert len(lengths) == 1
    assert skipped == {BAD}
    good = set(all_cell_ids(cb_shards)) - bad
    assert good <= set(seen)  # every readable cell delivered...
    if verify == "first":  # ...and nothing of the corrupt shard
        assert not (set(seen) & bad)
    assert len(seen) == 1408  # unreadable cells replaced by stand-ins


def test_worker_errors_surface_in_the_main_process(cb_shards, tmp_path):
    shards = _copy(cb_shards, tmp_path / "s")
    _flip(shards / BAD)
    loader = StatefulLoader(ShardStream(shards, cfg()), num_workers=2, prefetch_factor=2,
                            timeout=60)
    with pytest.raises(ShardFormatError, match=BAD):
        list(loader)


def test_missing_shard_and_damaged_manifest(cb_shards, tmp_path):
    shards = _copy(cb_shards, tmp_path / "s")
    (shards / BAD).unlink()
    with pytest.raises(ShardFormatError, match=BAD):
        list(ShardStream(shards, cfg(verify="never")))
    (shards / "manifest.json").write_text("{")
    with pytest.raises(ShardFormatError, match="not valid JSON"):
        ShardStream(shards, cfg())
    with pytest.raises(ShardFormatError, match="not found"):
        ShardStream(tmp_path / "nowhere", cfg())


def test_everything_unreadable_fails_instead_of_hanging(cb_shards, tmp_path):
    shards = _copy(cb_shards, tmp_path / "s")
    for e in load_manifest(shards)["shards"]:
        _flip(shards / e["file"])
    with pytest.raises(ShardFormatError, match="no readable block"):
        list(ShardStream(shards, cfg(on_error="skip")))
