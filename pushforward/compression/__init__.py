"""Image compression with flows: lossless coding with integer discrete flows.

``encode(flow, images) -> bytes`` and ``decode(flow, data) -> images`` range-code integer images
under an integer discrete flow (``pushforward.flows.build("idf", shape=(C, H, W))``); the stream
carries checksums, and decoding returns the input bit for bit or raises ``ValueError``. Needs the
``constriction`` package (``pip install "pushforward[compression]"``).
"""

from pushforward.compression.lossless import (
    decode,
    encode,
    information_content,
    model_checksum,
)

__all__ = ["encode", "decode", "information_content", "model_checksum"]
