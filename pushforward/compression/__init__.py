"""Image compression with flows: lossless coding with integer discrete flows.

``encode(flow, images) -> bytes`` and ``decode(flow, data) -> images`` range-code integer images
under an integer discrete flow (``pushforward.flows.build("idf", shape=(C, H, W))``); the stream
carries checksums, and decoding returns the input bit for bit or raises ``ValueError``.
``encode_lossy`` / ``decode_lossy`` quantise the latent first (rate–distortion trade-off). Needs
the ``constriction`` package (``pip install "pushforward[compression]"``).
"""

from pushforward.compression import lossy
from pushforward.compression.lossless import (
    decode,
    encode,
    information_content,
    model_checksum,
)
from pushforward.compression.lossy import decode_lossy, encode_lossy, fit_prior

__all__ = ["encode", "decode", "information_content", "model_checksum", "lossy",
           "encode_lossy", "decode_lossy", "fit_prior"]
