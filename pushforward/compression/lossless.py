"""Lossless compression with an integer discrete flow: range coding under the flow's prior.

Encoding (Hoogeboom et al., 2019, §4): the images ``x`` go through the flow's normalizing pass,
``z = f⁻¹(x)`` (exact integers), and each latent integer is entropy-coded under its discretized
logistic mixture ``P(z_i | …)``: first the top part, then each factored-out part given the kept
channels. Decoding runs the same order, rebuilding the kept channels with the levels' forward
maps, so the decoder sees exactly the conditioning the encoder used. The code length is
``−log₂ P(x)`` plus a small overhead (the probabilities are quantised to the coder's 24-bit
precision, the range coder's final word, a 60-byte header and one window radius per batch
and latent part).

The coder is ``constriction``'s range coder with a categorical model per symbol whose table is
the mixture's mass on a window ``[c − R, c + R]`` around its mean ``c`` (``R`` the largest
deviation in the batch, stored in the stream; mass outside the window is dropped, which can
only shorten the code). The tables are computed in float64 with NumPy from a float64 copy of the
flow, on one thread, identically on both sides.

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
    """A float64, eval-mode copy of ``flow`` evaluated on one thread, without gradients."""
    threads = torch.get_num_threads()
    copy64 = copy.deepcopy(flow).double().eval()
    torch.set_num_threads(1)
    try:
        with torch.no_grad(), _v.validation(False):
            yield copy64
    finally:
        torch.set_num_threads(threads)


def model_checksum(flow: torch.nn.Module) -> int:
    """CRC32 of the flow's parameters and buffers (names, shapes, float64 bytes)."""
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
def _mixture_numpy(params: tuple[Tensor, Tensor, Tensor]) -> tuple[np.ndarray, ...]:
    """Flattened float64 ``(n, K)`` arrays: log mixture weights, locations, inverse scales."""
    logits, loc, log_scale = (p.detach().double().reshape(-1, p.shape[-1]).numpy()
                              for p in params)
    log_weights = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    log_scale = np.clip(log_scale, -5.0, 9.0)
    return log_weights, loc, np.exp(-log_scale)


def _centers(log_weights: np.ndarray, loc: np.ndarray) -> np.ndarray:
    """The rounded mixture mean of every symbol (int64)."""
    return np.rint((np.exp(log_weights) * loc).sum(1)).astype(np.int64)


def _tables(log_weights: np.ndarray, loc: np.ndarray, inv_scale: np.ndarray,
            centers: np.ndarray, radius: int) -> np.ndarray:
    """Unnormalised masses ``(n, 2R + 1)`` on ``c − R … c + R`` (the row maximum is 1).

    ``log P(k) = b − softplus(a) − softplus(b) + log(1 − e^{−1/s})``, ``a = (k − ½ − μ)/s``,
    ``b = a + 1/s``, mixed with ``logsumexp`` (see ``pushforward.discretized``).
    """
    k = (centers[:, None] + np.arange(-radius, radius + 1)[None, :]).astype(np.float64)
    a = (k[:, :, None] - 0.5 - loc[:, None, :]) * inv_scale[:, None, :]
    b = a + inv_scale[:, None, :]
    log_p = (b - np.logaddexp(0.0, a) - np.logaddexp(0.0, b)
             + np.log(-np.expm1(-inv_scale))[:, None, :] + log_weights[:, None, :])
    log_p = np.logaddexp.reduce(log_p, axis=2)
    return np.exp(log_p - log_p.max(1, keepdims=True))


def _chunks(n: int, width: int) -> Iterator[slice]:
    rows = max(1, _TABLE_ENTRIES // width)
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


def _code_part(coder: object, params: tuple[Tensor, Tensor, Tensor], radius: int,
               symbols: np.ndarray | None) -> np.ndarray:
    """Encode ``symbols`` (flat int64) or, when None, decode them; returns the values."""
    model = _constriction().stream.model.Categorical(perfect=False)
    log_weights, loc, inv_scale = _mixture_numpy(params)
    centers = _centers(log_weights, loc)
    width = 2 * radius + 1
    out = np.empty(len(centers), dtype=np.int64)
    for part in _chunks(len(centers), width):
        table = _tables(log_weights[part], loc[part], inv_scale[part], centers[part], radius)
        if symbols is not None:
            index = (symbols[part] - centers[part] + radius).astype(np.int32)
            coder.encode(index, model, table)  # type: ignore[attr-defined]
            out[part] = symbols[part]
        else:
            index = coder.decode(model, table)  # type: ignore[attr-defined]
            out[part] = np.asarray(index, dtype=np.int64) + centers[part] - radius
    return out


def _radius(params: tuple[Tensor, Tensor, Tensor], symbols: np.ndarray) -> int:
    log_weights, loc, _ = _mixture_numpy(params)
    return max(1, int(np.abs(symbols - _centers(log_weights, loc)).max()))


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
        The stream: a checked header, side information and the range coder's words.

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
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"encode: batch_size must be a positive integer, got {batch_size!r}")
    x, container, dtype, rank = _as_images(flow, images)
    coder = _constriction().stream.queue.RangeEncoder()
    side: list[int] = []
    with _deterministic(flow) as model:
        base: FactorOutPrior = model.base  # type: ignore[assignment]
        for rows in _batches(len(x), batch_size):
            parts, kept = model.latent_parts(torch.from_numpy(x[rows]).double())
            n = parts[-1].shape[0]
            order = [(parts[-1], base.top.params(n))]
            for level in range(len(kept) - 1, -1, -1):
                order.append((parts[level], base.split_params(level, kept[level])))
            for z, params in order:
                symbols = z.reshape(-1).numpy().astype(np.int64)
                radius = _radius(params, symbols)
                side.append(radius)
                _code_part(coder, params, radius, symbols)
            if progress is not None:
                progress(rows.stop)
    header = stream.Header(container, dtype, rank, tuple(flow.event_shape), len(x), batch_size,
                           flow.levels, model_checksum(flow), _images_checksum(x))
    return stream.pack(header, np.asarray(side, dtype=np.uint32), coder.get_compressed())


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
    levels = flow.transform.levels  # type: ignore[union-attr]
    n_parts = len(levels)
    if len(side) != n_parts * math.ceil(header.count / header.batch):
        raise ValueError("decode: corrupted stream (side information has the wrong length)")
    coder = _constriction().stream.queue.RangeDecoder(payload)
    out = np.empty((header.count, *header.shape), dtype=np.int64)
    radii = iter(int(r) for r in side)
    try:
        with _deterministic(flow) as model:
            base: FactorOutPrior = model.base  # type: ignore[assignment]
            ms = model.transform
            last = len(ms.levels) - 1
            for rows in _batches(header.count, header.batch):
                n = rows.stop - rows.start
                params = base.top.params(n)
                shape = (n, *ms.levels[last].latent_shape)
                h = _decoded(coder, params, next(radii), shape)
                for level in range(last, 0, -1):
                    a, _ = ms.levels[level](h)
                    params = base.split_params(level - 1, a)
                    o = _decoded(coder, params, next(radii), tuple(params[1].shape[:-1]))
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


def _decoded(coder: object, params: tuple[Tensor, Tensor, Tensor], radius: int,
             shape: tuple[int, ...]) -> Tensor:
    values = _code_part(coder, params, radius, None)
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
    """
    flow = _check_flow(flow)
    x, *_ = _as_images(flow, images)
    total = 0.0
    with _deterministic(flow) as model:
        for rows in _batches(len(x), 256):
            total -= float(model.log_prob(torch.from_numpy(x[rows]).double()).sum())
    return total / math.log(2)
