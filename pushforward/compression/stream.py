"""The container of a compressed stream: a checked header, side information and the payload.

Layout (little-endian)::

    magic "PFIC" | version u8 | container u8 | dtype u8 | rank u8 | C, H, W u16 |
    count, batch, levels u32 | model CRC32 | images CRC32 | side words u32 |
    payload words u32 | side+payload CRC32 | header CRC32
    side   : u32 × side words     (reserved for side information; none in version 1)
    payload: u32 × payload words  (the range coder's output)

Every field that decoding trusts is covered by a CRC32: a flipped bit or a cut stream is
reported as a ``ValueError`` before any image is produced, and the decoded images must match the
encoder's CRC32 of the images before they are returned.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

__all__ = ["Header", "pack", "unpack", "MAGIC", "VERSION", "DTYPES"]

MAGIC = b"PFIC"
VERSION = 1
_FIELDS = struct.Struct("<4sBBBBHHHIIIIIIII")
_HEADER_CRC = struct.Struct("<I")
HEADER_BYTES = _FIELDS.size + _HEADER_CRC.size

# dtype codes: the decoded images come back in the encoder's input dtype
DTYPES = ("uint8", "int8", "int16", "int32", "int64", "uint16", "float32", "float64")


@dataclass(frozen=True)
class Header:
    """What the decoder needs besides the payload.

    Attributes:
        container: 0 NumPy array, 1 torch tensor.
        dtype: index into ``DTYPES`` of the input's dtype.
        rank: 3 (``(N, H, W)`` input, one channel) or 4 (``(N, C, H, W)``).
        shape: ``(C, H, W)``.
        count: number of images ``N``.
        batch: images per coding batch (the decoder repeats the same batches).
        levels: pixel levels of the model (values lie in ``[0, levels − 1]``).
        model_crc: CRC32 of the model's parameters.
        images_crc: CRC32 of the images (uint16 little-endian bytes, C order).
    """

    container: int
    dtype: int
    rank: int
    shape: tuple[int, int, int]
    count: int
    batch: int
    levels: int
    model_crc: int
    images_crc: int


def pack(header: Header, side: np.ndarray, payload: np.ndarray) -> bytes:
    """Serialise a header, side information and payload (both uint32 arrays)."""
    side = np.ascontiguousarray(side, dtype="<u4")
    payload = np.ascontiguousarray(payload, dtype="<u4")
    body = side.tobytes() + payload.tobytes()
    fields = _FIELDS.pack(MAGIC, VERSION, header.container, header.dtype, header.rank,
                          *header.shape, header.count, header.batch, header.levels,
                          header.model_crc, header.images_crc, side.size, payload.size,
                          zlib.crc32(body))
    return fields + _HEADER_CRC.pack(zlib.crc32(fields)) + body


def unpack(data: bytes) -> tuple[Header, np.ndarray, np.ndarray]:
    """Parse and check a stream; returns ``(header, side, payload)``.

    Raises:
        ValueError: not bytes, empty, truncated, trailing bytes, a bad magic number or
            version, or a checksum mismatch in the header or the body.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode: data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise ValueError("decode: the stream is empty (0 bytes)")
    if data[:4] != MAGIC[: len(data[:4])]:
        raise ValueError("decode: not a pushforward compressed stream (bad magic number)")
    if len(data) < HEADER_BYTES:
        raise ValueError(f"decode: truncated stream: {len(data)} bytes, the header alone needs "
                         f"{HEADER_BYTES}")
    raw = data[: _FIELDS.size]
    (_, version, container, dtype, rank, c, h, w, count, batch, levels, model_crc,
     images_crc, n_side, n_payload, body_crc) = _FIELDS.unpack(raw)
    (header_crc,) = _HEADER_CRC.unpack(data[_FIELDS.size: HEADER_BYTES])
    if zlib.crc32(raw) != header_crc:
        raise ValueError("decode: corrupted stream (header checksum mismatch)")
    if version != VERSION:
        raise ValueError(f"decode: stream version {version} is not supported (this is "
                         f"version {VERSION})")
    expected = HEADER_BYTES + 4 * (n_side + n_payload)
    if len(data) < expected:
        raise ValueError(f"decode: truncated stream: {len(data)} bytes, the header announces "
                         f"{expected}")
    if len(data) > expected:
        raise ValueError(f"decode: {len(data) - expected} unexpected bytes after the end of "
                         f"the stream ({expected} bytes announced)")
    body = data[HEADER_BYTES:]
    if zlib.crc32(body) != body_crc:
        raise ValueError("decode: corrupted stream (payload checksum mismatch)")
    if (container not in (0, 1) or dtype >= len(DTYPES) or rank not in (3, 4) or count < 1
            or batch < 1 or levels < 2 or min(c, h, w) < 1):
        raise ValueError("decode: corrupted stream (impossible header values)")
    words = np.frombuffer(body, dtype="<u4").astype(np.uint32)
    header = Header(container, dtype, rank, (c, h, w), count, batch, levels, model_crc,
                    images_crc)
    return header, words[:n_side], words[n_side:]
