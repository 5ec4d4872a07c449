"""Block encoding: exact round trip of every allowed dtype, versioning, corruption detection."""

from __future__ import annotations

import numpy as np
import pytest

from scforge.data.shard.format import ShardFormatError, decode_block, encode_block


def test_roundtrip_all_dtypes():
    rng = np.random.default_rng(0)
    arrays = {
        "u8": rng.integers(0, 255, 37).astype(np.uint8),
        "u16": rng.integers(0, 65535, 1001).astype(np.uint16),
        "u32": rng.integers(0, 2**32 - 1, 5, dtype=np.uint64).astype(np.uint32),
        "i64": rng.integers(-(2**40), 2**40, 9),
        "f16": rng.standard_normal(11).astype(np.float16),
        "f32": rng.standard_normal(0).astype(np.float32),
    }
    strings = {"cell_id": ["a", "b", "ü"], "cell_type": ["x", "y", "z"]}
    out = decode_block(encode_block(arrays, strings))
    for k, v in arrays.items():
        assert out[k].dtype == v.dtype and np.array_equal(out[k], v)
    assert out["cell_id"] == ["a", "b", "ü"] and out["cell_type"] == ["x", "y", "z"]


def test_deterministic_bytes():
    a = {"tokens": np.arange(1000, dtype=np.uint16)}
    assert encode_block(a, {"cell_id": ["c"]}) == encode_block(a, {"cell_id": ["c"]})


def test_rejects_object_dtype_and_corruption():
    with pytest.raises(ShardFormatError, match="dtype"):
        encode_block({"x": np.array([object()])}, {})
    blob = bytearray(encode_block({"t": np.arange(5000, dtype=np.uint16)}, {}))
    blob[len(blob) // 2] ^= 0xFF
    with pytest.raises(ShardFormatError):
        decode_block(bytes(blob))
    with pytest.raises(ShardFormatError):
        decode_block(b"not a block")


@pytest.mark.parametrize("dtype", ["uint16", "uint32", "int64", "float16", "float32"])
def test_unshuffle_kernel_matches_its_reference(dtype):
    from scforge.kernels.unshuffle import unshuffle, unshuffle_reference

    rng = np.random.default_rng(1)
    for n in (0, 1, 7, 4099):
        planes = rng.integers(0, 256, n * np.dtype(dtype).itemsize).astype(np.uint8)
        out, peak = unshuffle(planes, dtype)
        ref = unshuffle_reference(planes, dtype)
        assert out.dtype == ref.dtype and out.tobytes() == ref.tobytes()
        if n and np.dtype(dtype).kind == "u":
            assert peak == int(ref.max())


def test_decode_into_reused_buffer_and_range_check():
    from scforge.data.shard.format import open_block

    tokens = np.arange(3000, dtype=np.uint16)[::-1].copy()
    raw = open_block(encode_block({"tokens": tokens}, {"cell_id": ["c"]}))
    buf = np.full(3000, 7, dtype=np.uint16)
    out, peak = raw.array("tokens", buf)
    assert out is buf and np.array_equal(buf, tokens) and peak == 2999
    with pytest.raises(ValueError, match="need 3000"):
        raw.array("tokens", np.empty(10, dtype=np.uint16))
