"""User data from CSV or NPY files, and latitude/longitude ↔ unit vectors on the sphere S²."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

__all__ = ["load_csv", "load_npy", "load_table", "latlon_to_unit", "unit_to_latlon"]


def _number(token: str) -> float | None:
    try:
        return float(token)
    except ValueError:
        return None


def load_csv(path: str | os.PathLike, delimiter: str | None = None) -> np.ndarray:
    """A numeric table from a CSV file, as float64 ``(rows, columns)``.

    Lines starting with ``#`` and blank lines are skipped; a first row that is not numeric is
    taken as a header (and dropped); the delimiter (comma, semicolon, tab or spaces) is guessed
    from the first data line unless given.

    Args:
        path: the file.
        delimiter: the field separator (None: guessed).

    Returns:
        The table, a float64 array ``(rows, columns)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: ragged rows, non-numeric or non-finite values, or no data (the message names
            the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text CSV file") from None
    rows: list[list[float]] = []
    width = None
    header_allowed = True
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if delimiter is None:
            delimiter = next((d for d in (",", ";", "\t") if d in line), " ")
        tokens = [t.strip() for t in (line.split() if delimiter == " " else line.split(delimiter))]
        values = [_number(t) for t in tokens]
        if any(v is None for v in values):
            if header_allowed:
                header_allowed = False
                continue
            bad = tokens[values.index(None)]
            raise ValueError(f"{path}:{number}: {bad!r} is not a number")
        header_allowed = False
        if width is None:
            width = len(values)
        elif len(values) != width:
            raise ValueError(f"{path}:{number}: {len(values)} columns, expected {width}")
        if not all(math.isfinite(v) for v in values):  # type: ignore[arg-type]
            raise ValueError(f"{path}:{number}: non-finite value")
        rows.append(values)  # type: ignore[arg-type]
    if not rows:
        raise ValueError(f"{path}: no numeric rows")
    return np.asarray(rows, dtype=np.float64)


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """A numeric array from an ``.npy`` file (never unpickled), as float64 ``(rows, ...)``.

    Args:
        path: the file.

    Returns:
        The array as float64, ``(rows, ...)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a valid ``.npy`` file, an object array, not numeric, empty or non-finite.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"{path}: not a plain numeric .npy file ({error})") from None
    except (OSError, EOFError) as error:
        raise ValueError(f"{path}: not a valid .npy file ({error})") from None
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path}: expected one array, got {type(array).__name__}")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{path}: expected a numeric array, got dtype {array.dtype}")
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim < 2 or array.shape[0] == 0 or array[0].size == 0:
        raise ValueError(f"{path}: expected a non-empty array (rows, features), got "
                         f"shape {array.shape}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{path}: contains NaN or infinite values")
    return array


def load_table(path: str | os.PathLike) -> np.ndarray:
    """``load_csv`` or ``load_npy`` by the file's extension.

    Args:
        path: a ``.csv`` or ``.npy`` file.

    Returns:
        The table as float64 (see ``load_csv`` and ``load_npy``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: another extension, or a malformed file.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        return load_npy(path)
    if suffix in (".csv", ".txt", ".tsv"):
        return load_csv(path)
    raise ValueError(f"{path}: unsupported file type {suffix!r} (use .csv or .npy)")


def latlon_to_unit(latlon: np.ndarray) -> np.ndarray:
    """Latitude/longitude in degrees ``(N, 2)`` to unit vectors ``(N, 3)`` on S².

    ``x = (cos φ cos λ, cos φ sin λ, sin φ)`` for latitude ``φ`` and longitude ``λ``.

    Args:
        latlon: ``(N, 2)`` latitude, longitude in degrees.

    Returns:
        ``(N, 3)`` float64 unit vectors.

    Raises:
        ValueError: not two columns, or a latitude outside [−90, 90] / longitude outside
            [−360, 360].
    """
    latlon = np.asarray(latlon, dtype=np.float64)
    if latlon.ndim != 2 or latlon.shape[1] != 2:
        raise ValueError(f"latitude/longitude data must have 2 columns, got shape {latlon.shape}")
    lat, lon = latlon[:, 0], latlon[:, 1]
    if (np.abs(lat) > 90).any():
        raise ValueError("latitudes must lie in [-90, 90] degrees (first column)")
    if (np.abs(lon) > 360).any():
        raise ValueError("longitudes must lie in [-360, 360] degrees (second column)")
    phi, lam = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], axis=1)


def unit_to_latlon(x: np.ndarray) -> np.ndarray:
    """Unit vectors ``(N, 3)`` to latitude/longitude in degrees ``(N, 2)``.

    The inverse of :func:`latlon_to_unit`: ``φ = asin(x₃)``, ``λ = atan2(x₂, x₁)``, longitude
    in ``(−180, 180]``.

    Args:
        x: points on the unit sphere, ``(N, 3)``.

    Returns:
        ``(N, 2)`` float64 array of latitude, longitude in degrees.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"expected unit vectors (N, 3), got shape {x.shape}")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norm > 0, norm, 1.0)
    lat = np.degrees(np.arcsin(np.clip(x[:, 2], -1, 1)))
    lon = np.degrees(np.arctan2(x[:, 1], x[:, 0]))
    return np.stack([lat, lon], axis=1)
