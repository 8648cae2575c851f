"""Self-verifying files without pickle: atomic writes and safetensors with a JSON record.

``write_tensors(path, tensors, meta)`` writes one safetensors file whose metadata holds the JSON
record ``meta`` and a SHA-256 of the tensors and the record; ``read_tensors`` verifies both.
Every write is atomic (a temp file in the same folder, ``fsync``, ``os.replace``), so a crash
mid-write leaves the previous file. Used by checkpoints and the training state.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as _st_load
from safetensors.torch import save as _st_save
from torch import Tensor

__all__ = ["atomic_write", "write_tensors", "read_tensors", "FORMAT", "VERSION"]

FORMAT = "pushforward"
VERSION = 1


# -- atomic files ------------------------------------------------------------------------------
def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dir_fd)


def _digest(tensors: dict[str, Tensor], meta: str = "") -> str:
    """SHA-256 of the tensors (names, dtypes, shapes, bytes) and of the JSON record."""
    h = hashlib.sha256()
    h.update(meta.encode())
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def write_tensors(path: str | os.PathLike, tensors: dict[str, Tensor],
                  meta: dict[str, Any]) -> None:
    """Atomically write tensors and a JSON record (``meta``) into one safetensors file."""
    flat = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    record = json.dumps(meta, sort_keys=True, allow_nan=False)
    metadata = {
        "format": FORMAT,
        "version": str(VERSION),
        "meta": record,
        "sha256": _digest(flat, record),
    }
    atomic_write(path, _st_save(flat, metadata=metadata))


def _header_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` record of a safetensors file's header (8-byte length, then JSON)."""
    size = int.from_bytes(data[:8], "little")
    if len(data) < 8 or size > len(data) - 8:
        raise ValueError("truncated header")
    header = json.loads(data[8 : 8 + size])
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a file written by ``write_tensors`` and verify it.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a pushforward safetensors file, truncated, or its contents do not match
            the recorded checksum.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    data = path.read_bytes()  # one read: tensors and metadata come from the same bytes
    try:
        tensors = _st_load(data)
        metadata = _header_metadata(data)
    except (SafetensorError, OSError, ValueError, RuntimeError, OverflowError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path} is not a valid safetensors file ({reason})") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} was not written by pushforward (no format record)")
    if metadata.get("version") != str(VERSION):
        raise ValueError(f"{path}: unsupported checkpoint version {metadata.get('version')!r}")
    if metadata.get("sha256") != _digest(tensors, metadata.get("meta", "")):
        raise ValueError(f"{path}: checksum mismatch, the file is corrupt or was modified")
    try:
        meta = json.loads(metadata.get("meta", ""))
    except json.JSONDecodeError:
        raise ValueError(f"{path}: its metadata record is not valid JSON") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: its metadata record is not a JSON object")
    return tensors, meta
