"""gzip/deflate bodies: both directions, the size limit after inflating, bombs, bad encodings."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import pytest

from serve.protocol.encoding import choose_encoding, decode_body, encode_body
from serve.protocol.types import ProtocolError

PAYLOAD = bytes(range(256)) * 400  # 100 KiB


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    "coding,compressed",
    [
        ("gzip", gzip.compress(PAYLOAD)),
        ("x-gzip", gzip.compress(PAYLOAD)),
        ("GZIP", gzip.compress(PAYLOAD)),
        ("deflate", zlib.compress(PAYLOAD)),
        ("deflate", _raw_deflate(PAYLOAD)),
        ("identity", PAYLOAD),
        (None, PAYLOAD),
        ("", PAYLOAD),
        ("gzip, identity", gzip.compress(PAYLOAD)),
        ("deflate, gzip", gzip.compress(zlib.compress(PAYLOAD))),
    ],
    ids=[
        "gzip",
        "x-gzip",
        "upper",
        "zlib",
        "raw-deflate",
        "identity",
        "none",
        "empty",
        "list",
        "stacked",
    ],
)
def test_decode_body(coding, compressed: bytes) -> None:
    assert decode_body(compressed, coding, len(PAYLOAD)) == PAYLOAD


def test_multi_member_gzip() -> None:
    assert decode_body(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", 100) == b"abcd"


def test_limit_is_enforced_before_and_after_inflating() -> None:
    err = pytest.raises(ProtocolError, decode_body, PAYLOAD, None, len(PAYLOAD) - 1).value
    assert err.status == 413 and "exceeds the limit" in err.message
    err = pytest.raises(
        ProtocolError, decode_body, gzip.compress(PAYLOAD), "gzip", len(PAYLOAD) - 1
    ).value
    assert err.status == 413 and "after decompression" in err.message


def _bomb(coding: str, size: int) -> bytes:
    """`size` bytes of zeros compressed in 1 MiB steps (never held whole)."""
    wbits = 16 + zlib.MAX_WBITS if coding == "gzip" else zlib.MAX_WBITS
    compressor = zlib.compressobj(1, zlib.DEFLATED, wbits)
    zeros = bytes(1 << 20)
    return b"".join(compressor.compress(zeros) for _ in range(size >> 20)) + compressor.flush()


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_compression_bomb_is_refused_without_inflating_it(coding: str) -> None:
    bomb = _bomb(coding, 64 << 20)  # 64 MiB inflate from about 290 KiB
    limit = 4 << 20
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as info:
            decode_body(bomb, coding, limit)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.status == 413
    assert peak < 2 * limit, f"peak {peak} bytes while refusing a {limit}-byte-limited bomb"


@pytest.mark.parametrize(
    "coding,body,status,fragment",
    [
        ("br", b"x", 415, "unsupported Content-Encoding 'br'"),
        ("gzip, compress", b"x", 415, "unsupported Content-Encoding 'compress'"),
        ("gzip", b"not gzip", 400, "not valid gzip data"),
        ("gzip", gzip.compress(PAYLOAD)[:-20], 400, "truncated gzip data"),
        ("gzip", b"", 400, "truncated gzip data"),
        ("gzip", gzip.compress(b"ab") + b"junk", 400, "not valid gzip data"),
        ("deflate", zlib.compress(b"ab") + b"junk", 400, "4 bytes after the deflate end"),
        ("deflate", b"\xff\xff\xff", 400, "not valid deflate data"),
    ],
)
def test_bad_encodings(coding: str, body: bytes, status: int, fragment: str) -> None:
    err = pytest.raises(ProtocolError, decode_body, body, coding, 1 << 20).value
    assert err.status == status and fragment in err.message, err.message


@pytest.mark.parametrize(
    "accept,chosen",
    [
        (None, None),
        ("", None),
        ("gzip", "gzip"),
        ("deflate", "deflate"),
        ("gzip, deflate", "gzip"),
        ("gzip;q=0.5, deflate", "deflate"),
        ("gzip;q=0", None),
        ("*", "gzip"),
        ("*;q=0, deflate", "deflate"),
        ("br, identity", None),
        ("gzip;q=abc", None),
    ],
)
def test_choose_encoding(accept, chosen) -> None:
    assert choose_encoding(accept) == chosen


@pytest.mark.parametrize(
    "coding,decompress", [("gzip", gzip.decompress), ("deflate", zlib.decompress)]
)
def test_encode_body(coding: str, decompress) -> None:
    wire, used = encode_body(PAYLOAD, coding)
    assert used == coding and decompress(wire) == PAYLOAD
    assert decode_body(wire, used, len(PAYLOAD)) == PAYLOAD
    assert encode_body(b"small", coding) == (b"small", None)
    assert encode_body(PAYLOAD, None) == (PAYLOAD, None)
