"""Lossless compression with an integer discrete flow: range coding under the flow's prior.

Encoding (Hoogeboom et al., 2019, §4): the images ``x`` go through the flow's normalizing pass,
``z = f⁻¹(x)`` (exact integers), and each latent integer is entropy-coded under its discretized
logistic mixture ``P(z_i | …)``: first the top part, then each factored-out part given the kept
channels. Decoding runs the same order, rebuilding the kept channels with the levels' forward
maps, so the decoder sees exactly the conditioning the encoder used. The code length is
``−log₂ P(x)`` up to a small difference (the probabilities are quantised to the coder's 24-bit
precision, rare escapes, the range coder's final word and a 60-byte header).

The coder is ``constriction``'s range coder with a categorical model per symbol whose table is
the mixture's mass on a window ``[c − R, c + R]`` around its rounded mean ``c`` plus one escape
symbol holding the mass outside (``R`` a power of √2 covering twelve scales of every component,
so an escape has probability ≈ 10⁻⁵; an escaped deviation follows on 17 uniform bits). Windows
and tables are computed in float64 with NumPy from a float64 copy of the flow, on one thread,
identically on both sides, so the decoder rebuilds every table bit for bit.

References:
    Integer Discrete Flows and Lossless Compression, Hoogeboom, Peters, van den Berg &
    Welling, 2019, arXiv:1905.07376. Understanding Entropy Coding With Asymmetric Numeral
    Systems (ANS): a Statistician's Perspective, Bamler, 2022, arXiv:2201.01741 (constriction).
"""

from __future__ import annotations

import contextlib
import copy
import math
import zlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from pushforward import _validation as _v
from pushforward.compression import stream
from pushforward.presets.idf import FactorOutPrior, IntegerFlow

__all__ = ["encode", "decode", "information_content", "model_checksum"]

_TABLE_ENTRIES = 1 << 21  # symbols × window width per coder call (bounds the table memory)


def _constriction():  # noqa: ANN202 - a module
    try:
        import constriction
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise ImportError("pushforward.compression needs the 'constriction' package: "
                          "pip install 'pushforward[compression]'") from error
    return constriction


def _check_flow(flow: object) -> IntegerFlow:
    if not isinstance(flow, IntegerFlow) or not isinstance(flow.base, FactorOutPrior):
        raise ValueError("compression needs an integer discrete flow for images, e.g. "
                         "pushforward.flows.build('idf', shape=(C, H, W)); got "
                         f"{type(flow).__name__}")
    return flow


@contextlib.contextmanager
def _deterministic(flow: IntegerFlow) -> Iterator[IntegerFlow]:
    """A float64, eval-mode CPU copy of ``flow`` evaluated on one thread, without gradients."""
    threads = torch.get_num_threads()
    copy64 = copy.deepcopy(flow).cpu().double().eval()
    torch.set_num_threads(1)
    try:
        with torch.no_grad(), _v.validation(False):
            yield copy64
    finally:
        torch.set_num_threads(threads)


def model_checksum(flow: torch.nn.Module) -> int:
    """CRC32 of the flow's parameters and buffers (names, shapes, float64 bytes).

    Args:
        flow: any module.

    Returns:
        The CRC32, an unsigned 32-bit integer (streams record it to refuse another model).
    """
    crc = 0
    for name, tensor in flow.state_dict().items():
        crc = zlib.crc32(name.encode(), crc)
        crc = zlib.crc32(str(tuple(tensor.shape)).encode(), crc)
        if tensor.is_floating_point():
            tensor = tensor.double()
        crc = zlib.crc32(tensor.detach().cpu().contiguous().numpy().tobytes(), crc)
    return crc


def _as_images(flow: IntegerFlow, images: object) -> tuple[np.ndarray, int, int, int]:
    """Images as int64 ``(N, C, H, W)``, with the container, dtype and rank codes."""
    container = 1 if isinstance(images, Tensor) else 0
    if isinstance(images, Tensor):
        array = images.detach().cpu().numpy()
    elif isinstance(images, np.ndarray):
        array = images
    else:
        raise TypeError(f"encode: images must be a torch.Tensor or a numpy array, got "
                        f"{type(images).__name__}")
    name = array.dtype.name
    if name not in stream.DTYPES:
        raise TypeError(f"encode: images of dtype {name} are not supported; use one of "
                        f"{', '.join(stream.DTYPES)}")
    shape = tuple(flow.event_shape)
    rank = array.ndim
    if rank == 3 and shape[0] == 1:
        array = array[:, None]
    if array.ndim != 4 or tuple(array.shape[1:]) != shape:
        raise ValueError(f"encode: images must be (N, {', '.join(map(str, shape))})"
                         f"{' or (N, H, W)' if shape[0] == 1 else ''}, got {images.shape}")
    if array.shape[0] == 0:
        raise ValueError("encode: no images to compress (the batch is empty)")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise ValueError("encode: images must hold integer pixel values")
    if array.min() < 0 or array.max() > flow.levels - 1:
        raise ValueError(f"encode: pixel values must lie in [0, {flow.levels - 1}], got "
                         f"[{array.min()}, {array.max()}]")
    return array.astype(np.int64), container, stream.DTYPES.index(name), rank


def _images_checksum(x: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(x, dtype="<u2").tobytes())


# -- the probability model ----------------------------------------------------------------------
_KAPPA = 12.0          # window half-width in component scales (tail mass 2e⁻¹² ≈ 1.2e−5)
_MIN_WEIGHT = 1e-3     # components lighter than this do not widen the window
_MAX_RADIUS = 1 << 14  # wider deviations are escaped
_ESCAPE_BITS = 17      # an escaped deviation v is coded uniformly as v + 2¹⁶


def _mixture_numpy(params: tuple[Tensor, Tensor, Tensor]) -> tuple[np.ndarray, ...]:
    """Flattened float64 ``(n, K)`` arrays: mixture weights, locations, inverse scales."""
    logits, loc, log_scale = (p.detach().double().reshape(-1, p.shape[-1]).numpy()
                              for p in params)
    log_weights = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    log_scale = np.clip(log_scale, -5.0, 9.0)
    return np.exp(log_weights), loc, np.exp(-log_scale)


def _windows(weights: np.ndarray, loc: np.ndarray, inv_scale: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """Per symbol.

    The centre ``c`` (rounded mixture mean) and the window radius ``R`` (a power of √2, rounded up,
    covering ``κ`` scales of every component of weight ≥ 10⁻³ around ``c``).
    """
    centers = np.rint((weights * loc).sum(1))
    reach = np.abs(loc - centers[:, None]) + _KAPPA / inv_scale
    reach = np.where(weights >= _MIN_WEIGHT, reach, 0.0).max(1)
    # Radii in steps of √2 (2, 3, 4, 6, 8, 11, 16, ...): few table widths, little waste.
    steps = np.ceil(2.0 * np.log2(np.clip(reach, 2.0, _MAX_RADIUS)))
    return centers.astype(np.int64), np.ceil(np.exp2(steps / 2.0)).astype(np.int64)


def _tables(weights: np.ndarray, loc: np.ndarray, inv_scale: np.ndarray,
            centers: np.ndarray, radius: int) -> np.ndarray:
    """Masses ``(n, 2R + 2)``: the bins ``c − R … c + R`` then the escape (mass outside).

    Bin ``k`` of component ``j`` is ``F_j(k + ½) − F_j(k − ½)`` with ``F_j`` the logistic CDF;
    the escape is ``F_j(c − R − ½) + 1 − F_j(c + R + ½)``. Absolute errors are ~10⁻¹⁶, far
    below the coder's 2⁻²⁴ resolution, and both sides compute them identically.
    """
    edges = (centers[:, None] + np.arange(-radius, radius + 2)[None, :]) - 0.5
    u = (loc[:, None, :] - edges[:, :, None]) * inv_scale[:, None, :]
    with np.errstate(over="ignore"):
        cdf = 1.0 / (1.0 + np.exp(u))
    cdf = (cdf * weights[:, None, :]).sum(2)
    bins = np.diff(cdf, axis=1)
    escape = cdf[:, :1] + (1.0 - cdf[:, -1:])
    return np.maximum(np.concatenate([bins, escape], 1), 0.0)


def _code_part(coder: object, params: tuple[Tensor, Tensor, Tensor],
               symbols: np.ndarray | None) -> np.ndarray:
    """Encode ``symbols`` (flat int64) or, when None, decode them; returns the values.

    Symbols are coded in groups of equal window radius (in increasing radius, each group in
    index order): first their window indices (the last index escapes), then the escaped
    deviations, uniformly on 17 bits.
    """
    constriction = _constriction()
    model = constriction.stream.model.Categorical(perfect=False)
    uniform = constriction.stream.model.Uniform(1 << _ESCAPE_BITS)
    weights, loc, inv_scale = _mixture_numpy(params)
    centers, radii = _windows(weights, loc, inv_scale)
    out = np.empty(len(centers), dtype=np.int64) if symbols is None else symbols
    for radius in np.unique(radii):
        group = np.flatnonzero(radii == radius)
        r = int(radius)
        rows = max(1, _TABLE_ENTRIES // ((2 * r + 2) * weights.shape[1]))
        for start in range(0, len(group), rows):
            idx = group[start:start + rows]
            table = _tables(weights[idx], loc[idx], inv_scale[idx], centers[idx], r)
            if symbols is not None:
                v = symbols[idx] - centers[idx]
                escaped = np.abs(v) > r
                if np.any(np.abs(v) >= 1 << (_ESCAPE_BITS - 1)):
                    raise ValueError("encode: a latent value lies beyond what the coder can "
                                     "escape (|z − mean| ≥ 65536); the model does not fit "
                                     "these images")
                coder.encode(np.where(escaped, 2 * r + 1, v + r).astype(np.int32),  # type: ignore[attr-defined]
                             model, table)
                if escaped.any():
                    coder.encode((v[escaped] + (1 << (_ESCAPE_BITS - 1))).astype(np.int32),  # type: ignore[attr-defined]
                                 uniform)
            else:
                index = np.asarray(coder.decode(model, table), dtype=np.int64)  # type: ignore[attr-defined]
                escaped = index == 2 * r + 1
                v = index - r
                if escaped.any():
                    raw = coder.decode(uniform, int(escaped.sum()))  # type: ignore[attr-defined]
                    v[escaped] = np.asarray(raw, dtype=np.int64) - (1 << (_ESCAPE_BITS - 1))
                out[idx] = centers[idx] + v
    return out


def _batches(n: int, batch: int) -> Iterator[slice]:
    for start in range(0, n, batch):
        yield slice(start, min(n, start + batch))


# -- public API ----------------------------------------------------------------------------------
def encode(flow: IntegerFlow, images: Tensor | np.ndarray, batch_size: int = 256,
           progress: Callable[[int], None] | None = None) -> bytes:
    """Compress integer images losslessly with an integer discrete flow.

    Args:
        flow: an image IDF (``pushforward.flows.build("idf", shape=(C, H, W))``), trained.
        images: ``(N, C, H, W)`` (or ``(N, H, W)`` when ``C = 1``) integer pixels in
            ``[0, flow.levels − 1]``; a tensor or a NumPy array of an integer dtype or a float
            dtype holding integers. ``decode`` returns the same container, dtype and shape.
        batch_size: images per coding batch (the decoder uses the same batches).
        progress: called with the number of images coded after each batch.

    Returns:
        The stream: a checked header (shapes, counts, CRC32 checksums of the model, the
        images and the payload) and the range coder's words.

    Raises:
        ValueError: not an image IDF, no images, a wrong shape or values out of range.
        TypeError: an unsupported container or dtype.

    Example:
        >>> import torch, pushforward as pf
        >>> flow = pf.flows.build("idf", shape=(1, 4, 4), hidden=8, transforms=2)
        >>> x = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
        >>> data = pf.compression.encode(flow, x)
        >>> torch.equal(pf.compression.decode(flow, data), x)
        True
    """
    flow = _check_flow(flow)
    batch_size = _v.check_int(batch_size, "encode", "batch_size", type_error=False)
    x, container, dtype, rank = _as_images(flow, images)
    coder = _constriction().stream.queue.RangeEncoder()
    with _deterministic(flow) as model:
        base: FactorOutPrior = model.base  # type: ignore[assignment]
        for rows in _batches(len(x), batch_size):
            parts, kept = model.latent_parts(torch.from_numpy(x[rows]).double())
            n = parts[-1].shape[0]
            order = [(parts[-1], base.top.params(n))]
            for level in range(len(kept) - 1, -1, -1):
                order.append((parts[level], base.split_params(level, kept[level])))
            for z, params in order:
                _code_part(coder, params, z.reshape(-1).numpy().astype(np.int64))
            if progress is not None:
                progress(rows.stop)
    header = stream.Header(container, dtype, rank, tuple(flow.event_shape), len(x), batch_size,
                           flow.levels, model_checksum(flow), _images_checksum(x))
    return stream.pack(header, np.zeros(0, dtype=np.uint32), coder.get_compressed())


def decode(flow: IntegerFlow, data: bytes,
           progress: Callable[[int], None] | None = None) -> Tensor | np.ndarray:
    """Decompress a stream written by ``encode`` with the same flow, bit for bit.

    Args:
        flow: the flow the stream was encoded with (same parameters).
        data: the stream.
        progress: called with the number of images decoded after each batch.

    Returns:
        The images, in the encoder input's container (tensor or array), dtype and shape.

    Raises:
        ValueError: an empty, truncated, corrupted or foreign stream, a stream encoded with
            another model, or decoded images that fail the encoder's checksum — never a
            silently wrong image.
    """
    flow = _check_flow(flow)
    header, side, payload = stream.unpack(data)
    if header.shape != tuple(flow.event_shape):
        raise ValueError(f"decode: the stream holds {header.shape} images, the flow models "
                         f"{tuple(flow.event_shape)}")
    if header.model_crc != model_checksum(flow):
        raise ValueError("decode: the stream was encoded with a different model (parameter "
                         "checksum mismatch); use the encoder's checkpoint")
    if len(side):
        raise ValueError("decode: corrupted stream (unexpected side information)")
    coder = _constriction().stream.queue.RangeDecoder(payload)
    out = np.empty((header.count, *header.shape), dtype=np.int64)
    try:
        with _deterministic(flow) as model:
            base: FactorOutPrior = model.base  # type: ignore[assignment]
            ms = model.transform
            last = len(ms.levels) - 1
            for rows in _batches(header.count, header.batch):
                n = rows.stop - rows.start
                params = base.top.params(n)
                shape = (n, *ms.levels[last].latent_shape)
                h = _decoded(coder, params, shape)
                for level in range(last, 0, -1):
                    a, _ = ms.levels[level](h)
                    params = base.split_params(level - 1, a)
                    o = _decoded(coder, params, tuple(params[1].shape[:-1]))
                    h = torch.cat([o, a], 1)
                x, _ = ms.levels[0](h)
                out[rows] = x.numpy().astype(np.int64)
                if progress is not None:
                    progress(rows.stop)
    except ValueError:
        raise
    except Exception as error:  # the coder refuses a stream it cannot parse
        raise ValueError(f"decode: corrupted stream ({type(error).__name__}: {error})") from None
    if _images_checksum(np.clip(out, 0, 65535)) != header.images_crc or out.min() < 0 \
            or out.max() > header.levels - 1:
        raise ValueError("decode: the decoded images fail the encoder's checksum (a corrupted "
                         "stream, or a model that computes differently from the encoder's)")
    return _restore(out, header)


def _decoded(coder: object, params: tuple[Tensor, Tensor, Tensor],
             shape: tuple[int, ...]) -> Tensor:
    values = _code_part(coder, params, None)
    return torch.from_numpy(values.astype(np.float64)).reshape(shape)


def _restore(x: np.ndarray, header: stream.Header) -> Tensor | np.ndarray:
    if header.rank == 3:
        x = x[:, 0]
    array = x.astype(stream.DTYPES[header.dtype])
    return torch.from_numpy(array) if header.container == 1 else array


def information_content(flow: IntegerFlow, images: Tensor | np.ndarray) -> float:
    """``−log₂ P(x)`` in bits, summed over the images, under the coder's float64 model.

    The ideal code length that ``encode`` approaches (``len(encode(flow, x)) · 8`` exceeds it
    by the overhead described in the module docstring).

    Args:
        flow: a trained IDF.
        images: integer images, as for ``encode``.

    Returns:
        The total in bits (divide by the number of pixels for bits per dimension).
    """
    flow = _check_flow(flow)
    x, *_ = _as_images(flow, images)
    total = 0.0
    with _deterministic(flow) as model:
        for rows in _batches(len(x), 256):
            total -= float(model.log_prob(torch.from_numpy(x[rows]).double()).sum())
    return total / math.log(2)
