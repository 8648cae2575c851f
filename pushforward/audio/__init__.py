"""Audio: WAV input/output, mel spectrograms, Griffin-Lim, vocoding metrics and WaveGlow.

The vocoder preset (``pf.flows.build("vocoder", samples=...)``) and the helpers that vocode
whole utterances live in ``pushforward.presets.vocoder``.
"""

from pushforward.audio import bundle  # noqa: F401  (registers WAV folders with pushforward.data)
from pushforward.audio.metrics import log_spectral_distance, mel_cepstral_distortion
from pushforward.audio.segments import WaveSegments
from pushforward.audio.spectral import (
    MelSpectrogram,
    SpectrogramConfig,
    griffin_lim,
    mel_filterbank,
    mel_to_linear,
    stft_magnitude,
)
from pushforward.audio.wav import (
    Recording,
    load_wav_folder,
    read_wav,
    split_recordings,
    write_wav,
)
from pushforward.audio.waveglow import WaveGlow, WaveNet

__all__ = [
    "MelSpectrogram",
    "Recording",
    "SpectrogramConfig",
    "WaveGlow",
    "WaveNet",
    "WaveSegments",
    "griffin_lim",
    "load_wav_folder",
    "log_spectral_distance",
    "mel_cepstral_distortion",
    "mel_filterbank",
    "mel_to_linear",
    "read_wav",
    "split_recordings",
    "stft_magnitude",
    "write_wav",
]
