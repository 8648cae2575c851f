"""WaveGlow (Prenger, Valle & Catanzaro, 2019).

A flow over raw waveform conditioned on a mel spectrogram.

Normalizing direction (``x`` audio → ``z``): the ``T`` samples are grouped into ``G``-vectors,
``a = x.reshape(T/G, G)ᵀ`` of shape ``(G, L)``, ``L = T / G``, divided by a learned per-channel
scale ``a ← a ⊙ exp(−σ)`` (``σ`` starts at ``log data_scale``, the typical amplitude of the
audio, so that the untrained flow already matches its level); then for ``k = 1 … K``

    (every ``early_every`` steps) emit ``early_size`` channels of ``a`` to ``z``;
    a ← W_k a                                   (invertible 1×1 convolution, LU-parametrised);
    (a_1, a_2) = split(a);  (log s, t) = WN_k(a_1, c);  a_2 ← a_2 ⊙ exp(log s) + t,

where ``c`` is the mel spectrogram upsampled to the grouped rate and ``WN_k`` a WaveNet-like
stack of dilated convolutions with gated ``tanh ⊙ σ`` units. ``z`` collects the emitted channels
and the rest, and is ungrouped back to ``(T,)``.
``ladj_inv = −L Σ σ + Σ_k (L log|det W_k| + Σ log s)``.
The forward (generative) map runs the steps backwards: ``a_2 = (a_2 − t) ⊙ exp(−log s)`` and
``a = W_k⁻¹ a`` (triangular solves).

References:
    Prenger, Valle & Catanzaro, "WaveGlow: a flow-based generative network for speech
    synthesis", ICASSP 2019, arXiv:1811.00002.
    van den Oord et al., "WaveNet: a generative model for raw audio", 2016, arXiv:1609.03499.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pushforward.core import Transform
from pushforward.specs import serializable
from pushforward.transforms.linear import LULinear

__all__ = ["WaveNet", "WaveGlow"]


class WaveNet(nn.Module):
    """WaveGlow's coupling conditioner: dilated 1-D convolutions with gated activations.

    ``h = conv_in(a)``; for layer ``i`` (dilation ``2^i``):
    ``g = tanh(u_f) ⊙ σ(u_g)`` with ``(u_f, u_g) = conv_i(h) + V_i c``; ``h ← h + R_i g``
    and ``skip += S_i g``. Output ``conv_out(skip)``, initialised to zero so that the coupling
    starts as the identity.

    Args:
        in_channels: channels of ``a``.
        out_channels: output channels.
        cond_channels: channels of the conditioning ``c`` (same length as ``a``).
        hidden: residual and skip channels.
        layers: number of dilated layers.
        kernel_size: odd kernel size of the dilated convolutions.
    """

    def __init__(self, in_channels: int, out_channels: int, cond_channels: int, hidden: int = 32,
                 layers: int = 4, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1 or layers < 1 or hidden < 1:
            raise ValueError(f"WaveNet: need an odd kernel_size, layers >= 1, hidden >= 1; got "
                             f"{kernel_size}, {layers}, {hidden}")
        self.hidden = hidden
        self.conv_in = nn.Conv1d(in_channels, hidden, 1)
        self.dilated = nn.ModuleList(
            nn.Conv1d(hidden, 2 * hidden, kernel_size, dilation=2**i,
                      padding=2**i * (kernel_size - 1) // 2)
            for i in range(layers)
        )
        # All layers' conditioning projections in one 1×1 convolution.
        self.cond = nn.Conv1d(cond_channels, 2 * hidden * layers, 1)
        self.res_skip = nn.ModuleList(
            nn.Conv1d(hidden, 2 * hidden if i < layers - 1 else hidden, 1) for i in range(layers)
        )
        self.conv_out = nn.Conv1d(hidden, out_channels, 1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, a: Tensor, cond: Tensor) -> Tensor:
        """``(B, in_channels, L)``, ``(B, cond_channels, L)`` → ``(B, out_channels, L)``."""
        h = self.conv_in(a)
        cond_all = self.cond(cond).chunk(len(self.dilated), dim=1)
        skip = torch.zeros_like(h)
        for i, (conv, rs) in enumerate(zip(self.dilated, self.res_skip, strict=True)):
            u_f, u_g = (conv(h) + cond_all[i]).chunk(2, dim=1)
            gated = torch.tanh(u_f) * torch.sigmoid(u_g)
            out = rs(gated)
            if i < len(self.dilated) - 1:
                h = h + out[:, : self.hidden]
                skip = skip + out[:, self.hidden:]
            else:
                skip = skip + out
        return self.conv_out(skip)


@serializable("waveglow")
class WaveGlow(Transform):
    """WaveGlow over waveforms of ``samples`` samples, conditioned on their log-mel spectrogram.

    See the module docstring for the maps and ``ladj``. ``context`` is the log-mel spectrogram
    flattened, ``(B, n_mels · frames)`` with ``frames = 1 + samples // hop``; it is upsampled
    once per call to the grouped rate (a transposed convolution with stride ``hop / G``) and
    shared by all couplings. ``generate`` and ``normalize`` take a ``(B, n_mels, F)`` mel of any
    length, for whole utterances.

    The log scale of each coupling is soft-clamped, ``log s = b tanh(u / b)`` with ``b =
    scale_bound``, so the map stays invertible in floating point whatever the parameters.

    Args:
        samples: waveform length ``T`` (a multiple of ``hop``).
        n_mels: mel bands of the conditioning.
        hop: hop length of the mel spectrogram (a multiple of ``group``).
        group: ``G``, samples per vector.
        flows: ``K``, the number of (1×1 convolution, coupling) steps.
        early_every: emit channels to ``z`` before every ``early_every``-th step (0: never).
        early_size: channels emitted each time.
        hidden: WaveNet channels.
        layers: WaveNet dilated layers per coupling.
        kernel_size: WaveNet kernel size.
        cond_channels: channels of the upsampled conditioning.
        scale_bound: ``b`` of the soft clamp.
        data_scale: initial amplitude ``exp(σ)`` of the data-side scale.

    Example:
        >>> import torch
        >>> t = WaveGlow(64, n_mels=4, hop=16, group=4, flows=2, hidden=8, layers=2)
        >>> z = torch.randn(3, 64); mel = torch.randn(3, 4 * 5)
        >>> x, ladj = t(z, mel)
        >>> z2, ladj_inv = t.inverse(x, mel)
        >>> bool(torch.allclose(z, z2, atol=1e-4)), bool(torch.allclose(ladj, -ladj_inv))
        (True, True)
    """

    def __init__(self, samples: int, n_mels: int = 40, hop: int = 64, group: int = 8,
                 flows: int = 8, early_every: int = 4, early_size: int = 2, hidden: int = 32,
                 layers: int = 4, kernel_size: int = 3, cond_channels: int = 64,
                 scale_bound: float = 6.0, data_scale: float = 0.05) -> None:
        samples, hop, group = int(samples), int(hop), int(group)
        if group < 2 or hop % group or samples % hop or samples < hop:
            raise ValueError(f"WaveGlow: need group >= 2, hop a multiple of group and samples "
                             f"a positive multiple of hop; got samples={samples}, hop={hop}, "
                             f"group={group}")
        if flows < 1 or early_size < 0 or early_every < 0 or scale_bound <= 0 or not (
                data_scale > 0):
            raise ValueError("WaveGlow: need flows >= 1, early_every, early_size >= 0, "
                             "scale_bound > 0 and data_scale > 0")
        frames = 1 + samples // hop
        super().__init__(samples, samples, n_mels * frames)
        self.samples, self.n_mels, self.hop, self.group = samples, n_mels, hop, group
        self.scale_bound = float(scale_bound)
        self.log_scale = nn.Parameter(torch.full((group, 1), math.log(data_scale)))
        stride = hop // group
        self.upsample = nn.ConvTranspose1d(n_mels, cond_channels, 2 * stride, stride=stride)
        self._crop = stride // 2
        # Channel count entering each step, after the early outputs.
        self.step_channels: list[int] = []
        self.emit_before: list[int] = []
        channels = group
        for k in range(flows):
            emit = early_size if early_every and k % early_every == 0 and k > 0 else 0
            if channels - emit < 2:
                emit = 0
            channels -= emit
            self.emit_before.append(emit)
            self.step_channels.append(channels)
        self.convs = nn.ModuleList(LULinear(c) for c in self.step_channels)
        self.couplings = nn.ModuleList(
            WaveNet(c // 2, 2 * (c - c // 2), cond_channels, hidden, layers, kernel_size)
            for c in self.step_channels
        )

    # -- shapes ---------------------------------------------------------------------------------
    def _grouped(self, audio: Tensor) -> Tensor:
        """``(B, T)`` → ``(B, G, T/G)``: consecutive samples become one vector."""
        return audio.reshape(audio.shape[0], -1, self.group).transpose(1, 2)

    def _ungrouped(self, a: Tensor) -> Tensor:
        return a.transpose(1, 2).reshape(a.shape[0], -1)

    def _condition(self, mel: Tensor, length: int) -> Tensor:
        """Upsample ``(B, n_mels, F)`` to ``(B, cond_channels, length)`` (``F = 1 + T/hop``).

        The log-mel values (from ``log 1e-5 ≈ −11.5`` in silence to about 1) are first mapped
        by the fixed ``(mel + 5) / 4`` to roughly ``[−2, 1.5]``.
        """
        up = self.upsample((mel + 5.0) / 4.0)
        return up[..., self._crop: self._crop + length]

    def _mel(self, context: Tensor) -> Tensor:
        return context.reshape(context.shape[0], self.n_mels, -1)

    def _coupling_params(self, k: int, a_1: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        raw_s, shift = self.couplings[k](a_1, cond).chunk(2, dim=1)
        return self.scale_bound * torch.tanh(raw_s / self.scale_bound), shift

    @staticmethod
    def _conv(conv: LULinear, a: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        b, c, length = a.shape
        rows = a.transpose(1, 2).reshape(-1, c)
        rows, ladj = conv.inverse(rows) if inverse else conv(rows)
        return rows.reshape(b, length, c).transpose(1, 2), ladj.reshape(b, length).sum(1)

    # -- the two directions on any length -------------------------------------------------------
    def normalize(self, audio: Tensor, mel: Tensor) -> tuple[Tensor, Tensor]:
        """``z, ladj_inv`` for ``audio (B, T)`` and its log-mel ``(B, n_mels, 1 + T/hop)``."""
        a = self._grouped(audio) * torch.exp(-self.log_scale)
        cond = self._condition(mel, a.shape[-1])
        ladj = -a.shape[-1] * self.log_scale.sum().expand(audio.shape[0])
        emitted = []
        for k in range(len(self.convs)):
            if self.emit_before[k]:
                emitted.append(a[:, : self.emit_before[k]])
                a = a[:, self.emit_before[k]:]
            a, conv_ladj = self._conv(self.convs[k], a, inverse=True)  # a ← W_k a
            half = a.shape[1] // 2
            a_1, a_2 = a[:, :half], a[:, half:]
            log_s, shift = self._coupling_params(k, a_1, cond)
            a = torch.cat([a_1, a_2 * log_s.exp() + shift], dim=1)
            ladj = ladj + conv_ladj + log_s.sum(dim=(1, 2))
        return self._ungrouped(torch.cat([*emitted, a], dim=1)), ladj

    def generate(self, z: Tensor, mel: Tensor) -> tuple[Tensor, Tensor]:
        """``audio, ladj`` for ``z (B, T)`` and a log-mel ``(B, n_mels, 1 + T/hop)``."""
        zg = self._grouped(z)
        cond = self._condition(mel, zg.shape[-1])
        ladj = z.new_zeros(z.shape[0])
        sizes = [e for e in self.emit_before if e]
        pieces = list(torch.split(zg, [*sizes, zg.shape[1] - sum(sizes)], dim=1))
        a = pieces.pop()
        for k in reversed(range(len(self.convs))):
            half = a.shape[1] // 2
            a_1, a_2 = a[:, :half], a[:, half:]
            log_s, shift = self._coupling_params(k, a_1, cond)
            a = torch.cat([a_1, (a_2 - shift) * torch.exp(-log_s)], dim=1)
            a, conv_ladj = self._conv(self.convs[k], a, inverse=False)  # a ← W_k⁻¹ a
            ladj = ladj + conv_ladj - log_s.sum(dim=(1, 2))
            if self.emit_before[k]:
                a = torch.cat([pieces.pop(), a], dim=1)
        ladj = ladj + a.shape[-1] * self.log_scale.sum()
        return self._ungrouped(a * torch.exp(self.log_scale)), ladj

    # -- the transform contract -----------------------------------------------------------------
    def _forward(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.generate(z, self._mel(context))  # type: ignore[arg-type]

    def _inverse(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.normalize(x, self._mel(context))  # type: ignore[arg-type]
