"""Image files for the ``pushforward compress`` / ``decompress`` commands.

``read_images`` loads a folder of PNG files (sorted by name) or an IDX images file as a uint8
``(N, C, H, W)`` array; ``pack_names`` / ``unpack_names`` wrap a compressed stream with the
source's file names (so ``decompress`` restores them) in a small checked container::

    "PFNM" | version u8 | kind u8 (0 PNG folder, 1 IDX) | names bytes u32 | names CRC32 |
    names (UTF-8, one per line) | the stream of ``pushforward.compression.encode``
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["read_images", "write_images", "pack_names", "unpack_names"]

_MAGIC = b"PFNM"
_HEAD = struct.Struct("<4sBBII")


def read_images(source: str | os.PathLike) -> tuple[np.ndarray, list[str], int]:
    """``(images, names, kind)``: uint8 ``(N, C, H, W)``, file names, 0 (PNG folder) or 1 (IDX).

    Raises:
        FileNotFoundError: no such path.
        ValueError: a folder without PNG files, images of different sizes or modes, an
            unreadable file.
    """
    path = Path(source)
    if path.is_dir():
        from PIL import Image

        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png")
        if not files:
            raise ValueError(f"no .png files in {path}")
        arrays = []
        for file in files:
            try:
                with Image.open(file) as image:
                    if image.mode not in ("L", "RGB"):
                        raise ValueError(f"{file}: mode {image.mode} (expected 8-bit grayscale "
                                         "L or RGB)")
                    array = np.asarray(image, dtype=np.uint8)
            except OSError as error:
                raise ValueError(f"{file}: cannot read the image ({error})") from None
            arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"the images in {path} have different shapes: {sorted(shapes)}")
        return np.stack(arrays), [f.name for f in files], 0
    if path.is_file():
        from pushforward.data.images import load_idx

        array = load_idx(path)
        if array.ndim != 3 or array.dtype != np.uint8:
            raise ValueError(f"{path}: expected uint8 IDX images (N, H, W), got {array.dtype} "
                             f"{array.shape}")
        return array[:, None], [], 1
    raise FileNotFoundError(f"no such file or folder: {path}")


def write_images(images: np.ndarray, names: list[str], kind: int,
                 out: str | os.PathLike) -> list[Path]:
    """Write ``(N, C, H, W)`` uint8 images as PNG files into ``out``.

    The files are named ``names`` (or ``00000.png``...); an IDX source also gets its
    ``images-idx3-ubyte`` file back.
    """
    from PIL import Image

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    width = max(5, len(str(len(images))))
    names = names or [f"{i:0{width}d}.png" for i in range(len(images))]
    written = []
    for array, name in zip(images, names):
        image = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
        target = folder / Path(name).name
        Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(target, format="PNG")
        written.append(target)
    if kind == 1:
        n, _, h, w = images.shape
        idx = folder / "images-idx3-ubyte"
        idx.write_bytes(b"\0\0\x08\x03" + struct.pack(">III", n, h, w)
                        + np.ascontiguousarray(images[:, 0], dtype=np.uint8).tobytes())
        written.append(idx)
    return written


def pack_names(stream: bytes, names: list[str], kind: int) -> bytes:
    """The stream prefixed by the source's file names (see the module docstring)."""
    blob = "\n".join(names).encode("utf-8")
    return _HEAD.pack(_MAGIC, 1, kind, len(blob), zlib.crc32(blob)) + blob + stream


def unpack_names(data: bytes) -> tuple[bytes, list[str], int]:
    """``(stream, names, kind)`` from ``pack_names``' output.

    Raises:
        ValueError: not such a file, truncated or corrupted names.
    """
    if len(data) < _HEAD.size or data[:4] != _MAGIC:
        raise ValueError("not a file written by `pushforward compress` (bad magic number or "
                         "truncated)")
    _, version, kind, size, crc = _HEAD.unpack(data[:_HEAD.size])
    if version != 1 or kind not in (0, 1):
        raise ValueError("unsupported or corrupted `pushforward compress` file header")
    blob = data[_HEAD.size:_HEAD.size + size]
    if len(blob) != size or zlib.crc32(blob) != crc:
        raise ValueError("corrupted or truncated `pushforward compress` file (file names)")
    names = blob.decode("utf-8").split("\n") if size else []
    return data[_HEAD.size + size:], names, kind
