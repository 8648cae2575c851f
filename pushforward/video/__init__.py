"""Video prediction with flows.

Moving MNIST made from MNIST digits, a conditional multi-scale Glow whose couplings read the
encoded past frames (``"video-glow"``), per-frame bits/dim and autoregressive rollouts.

Example:
    >>> import numpy as np, pushforward as pf
    >>> videos = pf.video.generate(np.full((4, 28, 28), 255, np.uint8), videos=2, frames=3)
    >>> flow = pf.flows.build("video-glow", shape=(1, 32, 32), past=2, hidden=8, transforms=1,
    ...                       maps=2, encoder_hidden=4)
    >>> pf.video.bits_per_frame(flow, videos, past=2).shape
    torch.Size([1])
"""

from pushforward.video.coupling import SpatialCoupling
from pushforward.video.dataset import (
    bouncing_paths,
    generate,
    load_digits,
    moving_mnist,
    split_digits,
)
from pushforward.video.flow import FrameEncoder, VideoGlow
from pushforward.video.frames import (
    FramePairs,
    bits_per_frame,
    centres,
    dequantize,
    quantize,
    rollout,
)

__all__ = ["SpatialCoupling", "FrameEncoder", "VideoGlow", "FramePairs", "bits_per_frame",
           "centres", "dequantize", "quantize", "rollout", "bouncing_paths", "generate",
           "load_digits", "moving_mnist", "split_digits"]
