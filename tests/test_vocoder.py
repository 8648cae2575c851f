"""The audio stack on small synthetic waveforms: WAV input/output, STFT/mel against closed
forms, Griffin-Lim, the metrics, WaveGlow (invertibility, brute-force log-density) and the
vocoder preset."""

from __future__ import annotations

import math
import struct
import wave

import pytest
import torch

import pushforward as pf
from pushforward.audio import (
    MelSpectrogram,
    SpectrogramConfig,
    WaveGlow,
    WaveSegments,
    griffin_lim,
    load_wav_folder,
    log_spectral_distance,
    mel_cepstral_distortion,
    mel_filterbank,
    mel_to_linear,
    read_wav,
    split_recordings,
    stft_magnitude,
    write_wav,
)
from pushforward.audio.spectral import hz_to_mel, mel_to_hz
from pushforward.presets import vocoder as voc

RATE = 8000


def _sine(freq: float, samples: int = 2048, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(samples, dtype=torch.float64) / RATE
    return amplitude * torch.sin(2 * math.pi * freq * t)


def _tiny(**options: int) -> WaveGlow:
    sizes = dict(n_mels=4, hop=16, group=4, flows=3, early_every=2, early_size=1, hidden=6,
                 layers=2, cond_channels=5)
    return WaveGlow(32, **{**sizes, **options})


def _perturbed(t: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(scale * torch.randn_like(p))
    return t


# -- WAV input/output ---------------------------------------------------------------------------
def test_wav_round_trip(tmp_path):
    audio = _sine(440.0, 800).float()
    write_wav(tmp_path / "a.wav", audio, RATE)
    r = read_wav(tmp_path / "a.wav")
    assert (r.sample_rate, r.bits, r.audio.shape) == (RATE, 16, (800,))
    assert torch.allclose(r.audio, audio, atol=1 / 32768)
    assert torch.equal(r.audio * 32768, torch.round(r.audio * 32768))  # exact 16-bit levels


def test_read_wav_8_bit_stereo(tmp_path):
    path = tmp_path / "s.wav"
    with wave.open(str(path), "wb") as f:
        f.setnchannels(2)
        f.setsampwidth(1)
        f.setframerate(RATE)
        f.writeframes(bytes([128 + 64, 128, 0, 0]))  # (0.5, 0), (−1, −1)
    r = read_wav(path)
    assert r.bits == 8
    assert r.audio.tolist() == [0.25, -1.0]


def test_unreadable_wav_files_name_the_file(tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio")
    with pytest.raises(ValueError, match="notes.wav"):
        read_wav(text)
    # A WAVE file with IEEE-float samples (format tag 3), not PCM.
    data = struct.pack("<4f", 0.0, 0.1, 0.2, 0.3)
    fmt = struct.pack("<HHIIHH", 3, 1, RATE, 4 * RATE, 4, 32)
    riff = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack(
        "<I", len(data)) + data
    floats = tmp_path / "float.wav"
    floats.write_bytes(b"RIFF" + struct.pack("<I", len(riff)) + riff)
    with pytest.raises(ValueError, match="float.wav"):
        read_wav(floats)
    empty = tmp_path / "empty.wav"
    write_wav(empty, torch.zeros(4), RATE)
    empty.write_bytes(empty.read_bytes()[:44])  # header only: no samples
    with pytest.raises(ValueError, match="empty.wav"):
        read_wav(empty)
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        read_wav(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match="empty.wav|float.wav|notes.wav"):
        load_wav_folder(tmp_path, "all")


def test_fsdd_split_holds_out_index_0_to_4(tmp_path):
    paths = [tmp_path / f"{d}_jackson_{i}.wav" for d in range(2) for i in range(8)]
    train, test = split_recordings(paths)
    assert len(test) == 10 and len(train) == 6
    assert all(int(p.stem.split("_")[2]) < 5 for p in test)
    other = [tmp_path / f"clip{i:02d}.wav" for i in range(20)]
    train, test = split_recordings(other)
    assert len(test) == 2 and not set(train) & set(test)


# -- STFT, mel, Griffin-Lim ---------------------------------------------------------------------
def test_stft_of_a_sine_peaks_at_its_bin_with_the_hann_amplitude():
    n_fft, amplitude = 256, 0.5
    freq = 40 * RATE / n_fft  # exactly bin 40
    spec = stft_magnitude(_sine(freq, 4096, amplitude), n_fft, 64)
    middle = spec[:, 10:-10]
    assert (middle.argmax(0) == 40).all()
    # Periodic Hann window: |X_k| = A Σw / 2 = A n_fft / 4 at the tone's bin.
    assert torch.allclose(middle[40], torch.full_like(middle[40], amplitude * n_fft / 4),
                          rtol=1e-6)


def test_mel_scale_and_filterbank_closed_form():
    assert abs(float(hz_to_mel(700.0)) - 2595 * math.log10(2)) < 1e-9
    assert abs(float(mel_to_hz(hz_to_mel(1234.5))) - 1234.5) < 1e-9
    bank = mel_filterbank(40, 256, RATE)
    assert bank.shape == (40, 129) and (bank >= 0).all() and (bank <= 1).all()
    edges = mel_to_hz(torch.linspace(0, float(hz_to_mel(RATE / 2)), 42, dtype=torch.float64))
    assert torch.allclose(bank.sum(1) > 0, torch.ones(40, dtype=torch.bool))
    # Interior triangles overlap so that the bank sums to one between the first and last centre.
    freqs = torch.linspace(0, RATE / 2, 129, dtype=torch.float64)
    inside = (freqs >= edges[1]) & (freqs <= edges[-2])
    assert torch.allclose(bank.sum(0)[inside], torch.ones(int(inside.sum()), dtype=torch.float64))


@pytest.mark.parametrize("band", [5, 17, 33])
def test_a_pure_sine_lands_in_the_right_mel_band(band):
    config = SpectrogramConfig()
    edges = mel_to_hz(torch.linspace(0, float(hz_to_mel(RATE / 2)), config.n_mels + 2,
                                     dtype=torch.float64))
    centre = float(edges[band + 1])  # the centre of band `band`
    log_mel = MelSpectrogram(config)(_sine(centre, 4096).float())
    assert log_mel.shape == (40, 1 + 4096 // 64)
    assert (log_mel[:, 8:-8].argmax(0) == band).all()


def test_mel_inversion_is_non_negative_and_consistent():
    bank = mel_filterbank(40, 256, RATE)
    torch.manual_seed(0)
    spec = torch.rand(129, 7, dtype=torch.float64) ** 4
    log_mel = torch.log(bank @ spec)
    rebuilt = mel_to_linear(log_mel, bank, iterations=300)
    assert (rebuilt >= 0).all()
    residual = (bank @ rebuilt - bank @ spec).norm() / (bank @ spec).norm()
    pinv_only = (bank @ mel_to_linear(log_mel, bank, 0) - bank @ spec).norm() / (
        bank @ spec).norm()
    assert residual < 0.02 and residual <= pinv_only


def test_griffin_lim_recovers_a_signal_from_its_true_magnitude():
    audio = _sine(500.0, 2048) + 0.5 * _sine(1300.0, 2048)
    magnitude = stft_magnitude(audio, 256, 64)
    rebuilt = griffin_lim(magnitude, 256, 64, iterations=60, length=2048)
    assert rebuilt.shape == (2048,)
    inconsistency = (stft_magnitude(rebuilt, 256, 64) - magnitude).norm() / magnitude.norm()
    start = griffin_lim(magnitude, 256, 64, iterations=0, length=2048)
    assert inconsistency < 0.1
    assert inconsistency < (stft_magnitude(start, 256, 64) - magnitude).norm() / magnitude.norm()


# -- metrics --------------------------------------------------------------------------------
def test_lsd_and_mcd_closed_forms():
    torch.manual_seed(0)
    x = torch.randn(2048, dtype=torch.float64)
    assert log_spectral_distance(x, x) == 0.0 and mel_cepstral_distortion(x, x) == 0.0
    # Doubling the signal adds 20 log10 2 dB to every bin: LSD = 6.02 dB; it only shifts the
    # log mel spectrum by a constant, which lives in c_0 alone: MCD = 0.
    assert abs(log_spectral_distance(x, 2 * x) - 20 * math.log10(2)) < 1e-6
    assert mel_cepstral_distortion(x, 2 * x) < 1e-6
    assert mel_cepstral_distortion(x, _sine(300.0, 2048)) > 1.0
    with pytest.raises(ValueError, match="equal length"):
        log_spectral_distance(x, x[:-1])


# -- WaveGlow -------------------------------------------------------------------------------
def test_waveglow_shapes_and_float64_round_trip():
    t = _perturbed(_tiny()).double()
    z = torch.randn(5, 32, dtype=torch.float64)
    mel = torch.randn(5, 12, dtype=torch.float64)
    x, ladj = t(z, mel)
    assert x.shape == (5, 32) and ladj.shape == (5,)
    z_back, ladj_inv = t.inverse(x, mel)
    assert torch.allclose(z_back, z, atol=1e-12, rtol=0)
    assert torch.allclose(ladj_inv, -ladj, atol=1e-10, rtol=0)
    assert t.step_channels == [4, 4, 3] and t.emit_before == [0, 0, 1]


@pytest.mark.parametrize("early_every", [0, 2])
def test_waveglow_log_density_equals_brute_force(early_every):
    """``log p(x) = log N(f⁻¹(x)) − log|det ∂f/∂z|`` with the autograd Jacobian of ``f``."""
    t = _perturbed(_tiny(early_every=early_every)).double()
    flow = pf.Flow(t, pf.StandardNormal(32))
    x = 0.3 * torch.randn(2, 32, dtype=torch.float64)
    mel = torch.randn(2, 12, dtype=torch.float64)
    log_p = flow.log_prob(x, mel).detach()
    for i in range(2):
        z = t.inverse(x[i: i + 1], mel[i: i + 1])[0][0]
        jac = torch.autograd.functional.jacobian(
            lambda v, i=i: t(v[None], mel[i: i + 1])[0][0], z)
        brute = -0.5 * (z @ z) - 16 * math.log(2 * math.pi) - torch.linalg.slogdet(jac)[1]
        assert abs(float(log_p[i] - brute)) < 1e-9


def test_waveglow_is_length_agnostic_for_whole_utterances():
    t = _perturbed(_tiny()).double()
    audio = torch.randn(2, 96, dtype=torch.float64)  # 3× the training segment
    mel = torch.randn(2, 4, 1 + 96 // 16, dtype=torch.float64)
    z, ladj_inv = t.normalize(audio, mel)
    back, ladj = t.generate(z, mel)
    assert torch.allclose(back, audio, atol=1e-12) and torch.allclose(ladj, -ladj_inv)


def test_waveglow_refuses_inconsistent_sizes():
    with pytest.raises(ValueError, match="multiple of hop"):
        WaveGlow(100, hop=64)
    with pytest.raises(ValueError, match="multiple of group"):
        WaveGlow(128, hop=64, group=6)


# -- the preset and its helpers -------------------------------------------------------------
SMALL = dict(hidden=6, layers=2, transforms=2, cond_channels=4)


def test_vocoder_preset_shapes_sampling_and_save_load(tmp_path):
    flow = _perturbed(voc.Vocoder(256, **SMALL), 0.05)
    assert "vocoder" in pf.flows.names()
    audio = 0.1 * torch.randn(3, 256)
    mel = voc.spectrogram_of(flow, audio)
    assert mel.shape == (3, 40 * 5) and flow.context_features == 200
    assert flow.log_prob(audio, mel).shape == (3,)
    assert flow.sample(2, mel).shape == (2, 3, 256)
    cold = flow.sample(1, mel, temperature=0.1)
    hot = flow.sample(1, mel, temperature=1.0)
    assert cold.std() < hot.std()
    flow.eval()
    pf.save(flow, tmp_path / "v")
    again = pf.load(tmp_path / "v")
    assert torch.allclose(again.log_prob(audio, mel), flow.log_prob(audio, mel), atol=1e-4)
    with pytest.raises(ValueError, match="context"):
        voc.Vocoder(256, context=7)


def test_vocode_and_audio_log_prob_on_whole_utterances():
    flow = _perturbed(voc.Vocoder(256, **SMALL), 0.05)
    audio = 0.1 * torch.randn(1, 640)  # not the training length
    log_mel = MelSpectrogram()(audio)
    out = voc.vocode(flow, log_mel, temperature=0.5, seed=0)
    assert out.shape == (1, 640) and torch.isfinite(out).all()
    assert torch.equal(out, voc.vocode(flow, log_mel, temperature=0.5, seed=0))
    log_p = voc.audio_log_prob(flow, audio, log_mel)
    # On a segment of the training length it is the flow's own log_prob.
    seg = audio[:, :256]
    assert torch.allclose(voc.audio_log_prob(flow, seg),
                          flow.log_prob(seg, voc.spectrogram_of(flow, seg)), atol=1e-3)
    assert log_p.shape == (1,)
    with pytest.raises(ValueError, match="multiple of 64"):
        voc.audio_log_prob(flow, audio[:, :100])
    with pytest.raises(ValueError, match="temperature"):
        voc.vocode(flow, log_mel, temperature=0.0)


def test_bits_per_sample_closed_form():
    # p(x) = 1 on the unit cube: −log₂ p = 0, so 15 bits for 16-bit audio (bins of 2⁻¹⁵).
    assert voc.bits_per_sample(torch.zeros(3), 10) == 15.0
    lengths = torch.tensor([10, 30])
    log_p = -math.log(2) * lengths.double()  # one bit per sample
    assert abs(voc.bits_per_sample(log_p, lengths) - 16.0) < 1e-12


def test_segments_are_dequantised_crops_with_their_mel():
    audio = [torch.round(_sine(300.0, n).float() * 32768) / 32768 for n in (400, 900)]
    segments = WaveSegments(audio, 512, seed=0)
    x, context = segments[torch.tensor([0, 1, 1])]
    assert x.shape == (3, 512) and context.shape == (3, 40 * 9)
    steps = x * 32768
    frac = steps - torch.floor(steps)
    assert (frac >= 0).all() and not torch.equal(x, torch.round(steps) / 32768)
    assert torch.allclose(x[0, 400:], torch.zeros(112), atol=1 / 32768)  # zero padding


def test_vocoder_learns_synthetic_tones():
    """A few steps of maximum likelihood lower the NLL of tones given their mel."""
    torch.manual_seed(0)
    flow = voc.Vocoder(256, **SMALL)
    freqs = torch.linspace(200, 1500, 8)
    audio = torch.stack([_sine(float(f), 256, 0.3).float() for f in freqs])
    audio = audio + torch.rand(audio.shape) / 32768
    mel = voc.spectrogram_of(flow, audio)
    optimizer = torch.optim.Adam(flow.parameters(), lr=3e-3)
    before = float(-flow.log_prob(audio, mel).mean())
    for _ in range(15):
        loss = -flow.log_prob(audio, mel).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(-flow.log_prob(audio, mel).mean()) < before - 50


def _example():
    """``examples/vocoder.py`` imported as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "vocoder.py"
    spec = importlib.util.spec_from_file_location("example_vocoder", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_example_runs_end_to_end_on_synthetic_wavs(tmp_path):
    """``examples/vocoder.py`` on synthetic tones: every output file, finite metrics."""
    import json

    data = tmp_path / "wavs"
    for i in range(20):
        write_wav(data / f"tone{i:02d}.wav", _sine(150.0 + 40 * i, 1600, 0.3).float(), RATE)
    module = _example()
    out = tmp_path / "out"
    assert module.main(["--data", str(data), "--out", str(out), "--quick", "--minutes", "0.05",
                        "--vocode-files", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_bits_per_sample", "lsd_flow", "lsd_griffin_lim", "mcd_flow",
                "mcd_griffin_lim"):
        assert math.isfinite(metrics[key]), key
    assert (out / "spectrograms.png").stat().st_size > 1000
    wavs = sorted(p.name for p in (out / "wav").iterdir())
    assert len(wavs) == 6 and all(read_wav(out / "wav" / w).sample_rate == RATE for w in wavs)
    assert pf.load(out / "model").context_features == 40 * 17


@pytest.mark.slow
def test_cli_trains_the_vocoder_on_a_wav_folder(tmp_path):
    """``pushforward train --dataset FOLDER --flow vocoder``: WAV folders are audio bundles."""
    import json

    from pushforward.cli import main

    data = tmp_path / "wavs"
    for i in range(12):
        write_wav(data / f"tone{i:02d}.wav", _sine(150.0 + 40 * i, 2200, 0.3).float(), RATE)
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(data), "--flow", "vocoder", "--steps", "2",
                 "--option", "hidden=4", "--option", "layers=1", "--option", "transforms=2",
                 "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics["test_bits_per_sample"])
    assert metrics["n_test"] == 4  # 2 test files × 2 whole segments
    assert main(["train", "--dataset", str(data), "--flow", "maf", "--steps", "1",
                 "--out", str(tmp_path / "bad"), "--no-progress"]) != 0


def test_example_resumes_its_training_state(tmp_path):
    """``examples/vocoder.py --resume``: the saved state restores weights, average, Adam's
    moments and the loss log exactly, a spent budget trains no further, a larger one goes on."""
    from pushforward.training.checkpoint import STATE_FILE

    module = _example()
    audio = [torch.round(_sine(200.0 + 90 * i, 700).float() * 32768) / 32768 for i in range(4)]
    segments = WaveSegments(audio, 256, seed=0)
    options = dict(hidden=4, layers=2, transforms=2)
    torch.manual_seed(0)
    log: list[float] = []
    first = module.train(voc.Vocoder(256, **options), segments, 0.01, 2, 1e-3, tmp_path, log)
    steps = len(log)
    assert steps > 0 and (tmp_path / STATE_FILE).is_file()

    flow = voc.Vocoder(256, **options)
    again: list[float] = []
    average = module.train(flow, segments, 0.01, 2, 1e-3, tmp_path, again, resume=True)
    assert again == log  # the budget was spent: no step taken
    for a, b in zip(average.state_dict().values(), first.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    longer: list[float] = []
    module.train(voc.Vocoder(256, **options), segments, 0.02, 2, 1e-3, tmp_path, longer,
                 resume=True)
    assert len(longer) > steps and longer[:steps] == log

    optimizer = torch.optim.Adam(flow.parameters())
    with pytest.raises(ValueError, match="has shape"):
        module.load_state(tmp_path / STATE_FILE, voc.Vocoder(256, hidden=6, layers=2,
                          transforms=2), flow, optimizer, torch.Generator())
