"""A WaveGlow vocoder on real speech (Free Spoken Digit Dataset, 8 kHz), against Griffin-Lim.

Trains ``pf.flows.build("vocoder", ...)`` (WaveGlow: grouped samples, invertible 1×1
convolutions, affine couplings with WaveNet conditioners on the upsampled mel spectrogram) by
maximum likelihood on random 1,024-sample segments of the training split (dequantised 16-bit
audio), then on the held-out split (index 0–4 of each speaker and digit, 300 files):

* ``test_bits_per_sample``: the exact NLL of every whole test recording (cropped to a multiple
  of the hop), ``E_u[−log₂ p(x)] + 15`` bits per 16-bit sample;
* vocoding from the test mel spectrograms: the flow at temperature ``σ`` (default 0.6, the
  paper's) and Griffin-Lim (mel inverted by non-negative least squares, 100 iterations of fast
  Griffin-Lim) — log-spectral distance (LSD, dB) and mel cepstral distortion (MCD, dB, 24
  coefficients) of each against the original.

Writes to ``--out``: ``metrics.json`` (``test_bits_per_sample``, ``lsd_flow``,
``lsd_griffin_lim``, ``mcd_flow``, ``mcd_griffin_lim`` and the settings), ``model/`` (the
trained flow, ``pf.load``-able), ``wav/{name}_{original,flow,griffin_lim}.wav`` for a few
test recordings, ``spectrograms.png`` (original / flow / Griffin-Lim) and ``loss.png``.

The learning rate follows a cosine over the *wall-clock* budget (``--minutes``), so a budget
is honoured on a shared CPU; the model is saved every few minutes (``model/``), and
``--evaluate-only`` scores a saved model without training. With every save the whole training
state goes to ``training_state.safetensors`` (weights, their average, Adam's moments, the
generators, the step, the training seconds spent, the loss log); ``--resume`` continues from it,
``--minutes`` then being the budget of all the runs together, so a long run can be spread over
several sessions and follows one cosine over the whole budget (the number of steps in a
wall-clock budget still depends on the machine's load).

Run::

    python examples/vocoder.py --data ../shared/data/audio/fsdd/recordings --out results/vocoder
    python examples/vocoder.py --data ../shared/data/audio/fsdd/recordings --out /tmp/v --quick
    python examples/vocoder.py --data ../shared/data/audio/fsdd/recordings --out results/vocoder \
        --minutes 720 --resume      # again after an interruption: continues the same run
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

import pushforward as pf
import pushforward.presets.vocoder as voc
from pushforward.audio import (
    MelSpectrogram,
    SpectrogramConfig,
    WaveSegments,
    griffin_lim,
    load_wav_folder,
    log_spectral_distance,
    mel_cepstral_distortion,
    mel_to_linear,
    write_wav,
)
from pushforward.audio.segments import dequantize
from pushforward.training import checkpoint as ckpt
from pushforward.training.tensorfile import read_tensors, write_tensors

FULL = dict(options=dict(hidden=32, layers=4, transforms=8), segment=1024, batch=16,
            minutes=45.0, vocode_files=300)
QUICK = dict(options=dict(hidden=16, layers=3, transforms=4), segment=1024, batch=8,
             minutes=4.0, vocode_files=30)
GRIFFIN_LIM_ITERATIONS = 100


def save_state(path: Path, flow: pf.Flow, average: pf.Flow, optimizer: torch.optim.Optimizer,
               generator: torch.Generator, step: int, elapsed: float, log: list[float]) -> None:
    """Write everything a resumed run needs, atomically, into one safetensors file."""
    tensors, rng = ckpt.rng_state()
    tensors.update({f"model.{k}": v for k, v in ckpt.state_tensors(flow).items()})
    tensors.update({f"average.{k}": v for k, v in ckpt.state_tensors(average).items()})
    moments, groups = ckpt.optimizer_state(optimizer)
    tensors.update(moments)
    tensors["generator"] = generator.get_state()
    tensors["log"] = torch.tensor(log, dtype=torch.float64)
    write_tensors(path, tensors, {"step": step, "elapsed": elapsed, "optimizer": groups,
                                  "rng": rng})


def load_state(path: Path, flow: pf.Flow, average: pf.Flow, optimizer: torch.optim.Optimizer,
               generator: torch.Generator) -> tuple[int, float, list[float]]:
    """Restore what ``save_state`` wrote; returns (step, training seconds spent, loss log).

    Raises:
        ValueError: the file belongs to another model (say, ``--quick`` against a full run).
    """
    tensors, meta = read_tensors(path)
    for prefix, module in (("model.", flow), ("average.", average)):
        ckpt.load_state(module, {k[len(prefix):]: v for k, v in tensors.items()
                                 if k.startswith(prefix)}, str(path))
    ckpt.set_optimizer_state(optimizer, tensors, meta["optimizer"])
    ckpt.set_rng_state(tensors, meta["rng"])
    generator.set_state(tensors["generator"])
    return int(meta["step"]), float(meta["elapsed"]), tensors["log"].tolist()


def train(flow: pf.Flow, segments: WaveSegments, minutes: float, batch: int, lr: float,
          out: Path, log: list[float], resume: bool = False) -> pf.Flow:
    """Maximum likelihood with Adam, a cosine learning rate over the wall-clock budget and an
    exponential moving average of the weights (decay 0.995), which is returned.

    Every five minutes and at the end the average goes to ``out/model`` and the training state
    to ``out/training_state.safetensors``; with ``resume`` a run starts from that state, the
    budget counting the training seconds already spent."""
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    average = copy.deepcopy(flow)
    generator = torch.Generator().manual_seed(1)
    state = out / ckpt.STATE_FILE
    step, spent = 0, 0.0
    if resume and state.is_file():
        step, spent, log[:] = load_state(state, flow, average, optimizer, generator)
        print(f"resumed at step {step} after {spent / 60:.1f} min of training", flush=True)
    start = last_save = time.time()
    budget = 60.0 * minutes

    def checkpoint() -> None:
        pf.save(average, out / "model")
        save_state(state, flow, average, optimizer, generator, step,
                   spent + time.time() - start, log)

    while (elapsed := spent + time.time() - start) < budget:
        for group in optimizer.param_groups:
            group["lr"] = lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * elapsed / budget)))
        index = torch.randint(0, len(segments), (batch,), generator=generator)
        x, context = segments[index]
        loss = -flow.log_prob(x, context).mean() / x.shape[1]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(flow.parameters(), 10.0)
        optimizer.step()
        step += 1
        decay = min(0.995, (1 + step) / (10 + step))
        with torch.no_grad():
            for a, p in zip(average.parameters(), flow.parameters(), strict=True):
                a.lerp_(p, 1 - decay)
        log.append(float(loss.detach()))
        if step % 50 == 0:
            recent = sum(log[-50:]) / 50
            print(f"step {step}  {elapsed / 60:.1f} min  NLL {recent:.4f} nats/sample "
                  f"({recent / math.log(2) + 15:.3f} bits)", flush=True)
        if time.time() - last_save > 300:
            checkpoint()
            last_save = time.time()
    print(f"trained {step} steps in {(spent + time.time() - start) / 60:.1f} min", flush=True)
    checkpoint()
    average.eval()
    return average


def crop(audio: torch.Tensor, hop: int) -> torch.Tensor:
    """The longest prefix whose length is a multiple of ``hop``."""
    return audio[: audio.numel() // hop * hop]


@torch.no_grad()
def evaluate(flow: pf.Flow, test: list, config: SpectrogramConfig, temperature: float,
             vocode_files: int, out: Path, examples: int = 3) -> dict:
    """Test NLL on every test file; LSD/MCD of the flow and Griffin-Lim on ``vocode_files``."""
    mel = MelSpectrogram(config)
    generator = torch.Generator().manual_seed(2)
    total_log_prob, total_samples = 0.0, 0
    for r in test:
        audio = crop(r.audio, config.hop)[None]
        x = dequantize(audio, generator)
        total_log_prob += float(voc.audio_log_prob(flow, x, mel(audio)).double().sum())
        total_samples += audio.shape[1]
    bits = voc.bits_per_sample(torch.tensor([total_log_prob]), total_samples)
    # Every tenth file first, so that a subset spreads over speakers and digits.
    order = sorted(range(len(test)), key=lambda i: (i % 10, i))[:vocode_files]
    scores = {k: [] for k in ("lsd_flow", "lsd_griffin_lim", "mcd_flow", "mcd_griffin_lim")}
    shown = []
    for rank, i in enumerate(order):
        audio = crop(test[i].audio, config.hop)
        log_mel = mel(audio[None])
        flow_audio = voc.vocode(flow, log_mel, temperature, seed=i)[0]
        magnitude = mel_to_linear(log_mel[0].double(), mel.filterbank.double())
        gl_audio = griffin_lim(magnitude, config.n_fft, config.hop, GRIFFIN_LIM_ITERATIONS,
                               length=audio.numel()).float()
        for name, estimate in (("flow", flow_audio), ("griffin_lim", gl_audio)):
            scores[f"lsd_{name}"].append(log_spectral_distance(audio, estimate, config))
            scores[f"mcd_{name}"].append(mel_cepstral_distortion(audio, estimate, config))
        if rank < examples:
            stem = test[i].path.stem
            for name, signal in (("original", audio), ("flow", flow_audio),
                                 ("griffin_lim", gl_audio)):
                write_wav(out / "wav" / f"{stem}_{name}.wav", signal, config.sample_rate)
            shown.append((stem, audio, flow_audio, gl_audio))
    plot_spectrograms(shown, config, temperature, out / "spectrograms.png")
    result = {"test_bits_per_sample": bits}
    result.update({k: sum(v) / len(v) for k, v in scores.items()})
    result["vocoded_files"] = len(order)
    return result


def plot_spectrograms(shown: list, config: SpectrogramConfig, temperature: float,
                      path: Path) -> None:
    """Log-power spectrograms, one column per recording: original, flow, Griffin-Lim."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pushforward.audio import stft_magnitude

    rows = ("original", f"WaveGlow flow (σ = {temperature})",
            f"Griffin-Lim ({GRIFFIN_LIM_ITERATIONS} it.)")
    fig, axes = plt.subplots(3, len(shown), figsize=(4 * len(shown), 7.5), squeeze=False)
    for j, (stem, *signals) in enumerate(shown):
        for i, signal in enumerate(signals):
            power = 20 * torch.log10(stft_magnitude(signal, config.n_fft, config.hop) + 1e-5)
            duration = signal.numel() / config.sample_rate
            axes[i, j].imshow(power.numpy(), origin="lower", aspect="auto", cmap="magma",
                              vmin=-80, vmax=float(power.max()),
                              extent=(0, duration, 0, config.sample_rate / 2000))
            axes[i, j].set_title(f"{stem}: {rows[i]}", fontsize=9)
            axes[i, j].set_ylabel("kHz")
        axes[-1, j].set_xlabel("s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_loss(log: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = max(1, len(log) // 100)
    smooth = [sum(log[i: i + window]) / window for i in range(0, len(log) - window + 1, window)]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([i * window for i in range(len(smooth))],
            [s / math.log(2) + 15 for s in smooth])
    ax.set_xlabel("step")
    ax.set_ylabel("train NLL (bits / sample)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder of WAV files (FSDD recordings)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="a few minutes end to end")
    parser.add_argument("--minutes", type=float, help="training budget (wall clock)")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--vocode-files", type=int)
    parser.add_argument("--evaluate-only", action="store_true",
                        help="score the model saved in OUT/model without training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/training_state.safetensors; --minutes is the "
                             "budget of all runs together")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    budget = QUICK if args.quick else FULL
    minutes = budget["minutes"] if args.minutes is None else args.minutes
    vocode_files = args.vocode_files or budget["vocode_files"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = SpectrogramConfig()
    t0 = time.time()
    test = load_wav_folder(args.data, "test", sample_rate=config.sample_rate)
    if args.evaluate_only:
        flow = pf.load(out / "model")
        log: list[float] = []
    else:
        train_set = load_wav_folder(args.data, "train", sample_rate=config.sample_rate)
        print(f"{len(train_set)} training and {len(test)} test recordings", flush=True)
        flow = voc.Vocoder(budget["segment"], **budget["options"])
        segments = WaveSegments([r.audio for r in train_set], budget["segment"], config,
                                seed=args.seed)
        log = []
        flow = train(flow, segments, minutes, budget["batch"], args.lr, out, log, args.resume)
        plot_loss(log, out / "loss.png")
    flow.eval()
    metrics = evaluate(flow, test, config, args.temperature, vocode_files, out)
    metrics.update(temperature=args.temperature, griffin_lim_iterations=GRIFFIN_LIM_ITERATIONS,
                   training_minutes=minutes, training_steps=len(log),
                   segment=budget["segment"], batch_size=budget["batch"],
                   preset_options=flow.config["options"], test_files=len(test),
                   seconds=round(time.time() - t0, 1))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
