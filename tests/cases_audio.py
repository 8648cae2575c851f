"""Contract cases of the audio flows: WaveGlow on tiny waveforms with a flattened mel context.

WaveGlow is always conditional: its context is the mel spectrogram, ``n_mels · (1 + T // hop)``
numbers (here 4 bands × 3 frames), so the only context width is 12.
"""

from contract import Case

from pushforward.audio import WaveGlow


def _waveglow(context: int, **options: int) -> WaveGlow:
    sizes = dict(n_mels=4, hop=16, group=4, flows=3, early_every=2, early_size=1, hidden=4,
                 layers=2, cond_channels=3)
    t = WaveGlow(32, **{**sizes, **options})
    assert context == t.context_features, "WaveGlow's context is its flattened mel spectrogram"
    return t


CASES = [
    Case("WaveGlow", _waveglow, (32,), contexts=(12,), perturb=0.2, batch=3),
]
