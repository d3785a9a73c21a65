"""Sampling throughput of each numerics mode (``--precision``, ``--compile``, ``--memory-format``) at several batch
sizes and image sizes (``--sizes``: the preset's model sized to each, ``ModelConfig.levels`` auto), with what each
mode costs in accuracy, and (``--profile``) where the time of fp32 eager sampling goes, by operator.

Throughput is images x network evaluations per second of the real sampler (Euler-Maruyama through
``ContinuousModel.generate``: the per-image noise streams, the SDE update and the uint8 conversion included), and
the share of a dense peak measured on this device for the precision used (a 4096^2 (GPU) or 2048^2 (CPU) matmul in
fp32, TF32 or bf16). FLOPs per image per evaluation come from torch.utils.flop_counter over one forward pass.

For each mode: the largest uint8 difference of images 35..41 drawn in the first batch size against the same images
drawn in a batch of 7 (0: image i is a function of (seed, i, mode)), and against fp32 eager. "first call s" is the
first timed call of the mode (its compile included). ``SampleConfig``'s ``auto`` numerics
(``diffusion.precision.resolve_numerics``) pick channels_last on a CPU, compiled for runs long enough to repay it. With ``--run-dir`` (a run
with a trained model and classifiers) it also draws ``--n`` images in every mode from the same seeds and counts
how many of the count's decisions (q = c_p+ and c_id+) differ from fp32 eager.

    python benchmarks/sampling_modes.py                         # cpu preset, random weights, this machine
    OMP_NUM_THREADS=2 python benchmarks/sampling_modes.py --sizes 28,64 --batches 128 --precisions fp32
    python benchmarks/sampling_modes.py --preset paper --batches 64,256,1024 --compile default,reduce-overhead
    python benchmarks/sampling_modes.py --run-dir runs/demo --n 256   # + decisions changed on the demo model
    python benchmarks/sampling_modes.py --profile --batches 128       # + the operator profile
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from diffaudit.presets import get_preset
from diffaudit.diffusion.generative import ContinuousModel
from diffaudit.diffusion.precision import AUTO_COMPILE_EVALUATIONS, compiled, in_memory_format
from diffaudit.diffusion.score import ScoreModel
from diffaudit.diffusion.sde import SubVPSDE
from diffaudit.diffusion.unet import build_unet


@dataclasses.dataclass(frozen=True)
class Mode:
    name: str
    precision: str = "fp32"
    compile: str = "none"
    channels_last: bool = False


def modes(device: torch.device, compile_modes: list[str]) -> list[Mode]:
    """Eager modes in each precision, contiguous and channels_last; then compiled ones (channels_last on a CPU, as
    the auto numerics there)."""
    out = [Mode("fp32"), Mode("fp32 channels_last", channels_last=True)]
    if device.type == "cuda":
        out += [Mode("tf32", "tf32"), Mode("tf32 channels_last", "tf32", channels_last=True)]
    out.append(Mode("bf16 autocast", "bf16"))
    if device.type == "cuda":  # a CPU without native bf16 emulates it (about 1 GFLOP/s here): one row says so
        out.append(Mode("bf16 channels_last", "bf16", channels_last=True))
    best = "tf32" if device.type == "cuda" else "fp32"
    for c in compile_modes:
        if c == "reduce-overhead" and device.type != "cuda":
            continue  # CUDA graphs: GPU only
        cl = device.type == "cpu"
        out.append(Mode(f"{best}{' channels_last' if cl else ''} compile {c}", best, c, channels_last=cl))
        if device.type == "cuda":  # on a CPU each compiled shape costs a minute or more; bf16 eager is measured
            out.append(Mode(f"bf16 compile {c}", "bf16", c))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, precision: str) -> float:
    """FLOP/s of a square matmul in ``precision`` (the dense peak the sampler is measured against)."""
    n = 4096 if device.type == "cuda" else (2048 if precision != "bf16" else 512)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        for _ in range(2):
            a @ a
        sync(device)
        reps = 20 if device.type == "cuda" else (5 if precision != "bf16" else 2)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ a
        sync(device)
        return 2 * n**3 * reps / (time.perf_counter() - t0)
    finally:
        torch.set_float32_matmul_precision(before)


def make_model(score: ScoreModel, sde, mode: Mode, shape) -> ContinuousModel:
    """The mode's model as the sampler makes it (``diffusion.precision``): a channels_last copy, then compiled."""
    model = ContinuousModel(score, sde, image_shape=shape)
    return compiled(in_memory_format(model, "channels_last" if mode.channels_last else "contiguous"), mode.compile)


def draw(model: ContinuousModel, mode: Mode, indices, steps: int, device, seed: int = 3) -> np.ndarray:
    return model.generate(indices=indices, seed=seed, sampler="em", steps=steps, device=device,
                          precision=mode.precision)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu", help="the model preset (random weights) when no --run-dir is given")
    ap.add_argument("--run-dir", default=None, help="a run with a trained model (and classifiers for the decisions)")
    ap.add_argument("--sizes", default="28", help="image sizes of the preset's model (levels from the size)")
    ap.add_argument("--batches", default="32,128,512")
    ap.add_argument("--steps", type=int, default=20, help="sampler steps per timed call")
    ap.add_argument("--compile", default="default", help="comma-separated torch.compile modes to time ('' for none)")
    ap.add_argument("--precisions", default="fp32,tf32,bf16", help="the precisions whose modes are timed")
    ap.add_argument("--n", type=int, default=256, help="images per mode for the decisions (with --run-dir)")
    ap.add_argument("--decision-steps", type=int, default=100)
    ap.add_argument("--profile", action="store_true", help="also print fp32 eager's operator profile")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    sde = SubVPSDE()
    peaks = {p: matmul_peak(device, p) for p in (["fp32", "tf32", "bf16"] if device.type == "cuda" else ["fp32", "bf16"])}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}; " + ", ".join(f"{p} matmul peak {v / 1e9:.0f} GFLOP/s" for p, v in peaks.items()))
    print(f"auto numerics: channels_last on a CPU, compiled there when n x NFE >= {AUTO_COMPILE_EVALUATIONS} per "
          "batch shape; contiguous and uncompiled elsewhere")
    batches = [int(b) for b in args.batches.split(",")]
    compile_modes = [c for c in args.compile.split(",") if c]
    precisions = set(args.precisions.split(","))
    if args.run_dir:
        from diffaudit.training.loop import load_score_model

        score, meta = load_score_model(f"{args.run_dir}/train", device=str(device))
        models = [(score, tuple(meta["image_shape"]))]
    else:
        preset = get_preset(args.preset)
        channels = 3 if args.preset == "paper" else 1
        models = []
        for size in (int(v) for v in args.sizes.split(",")):
            torch.manual_seed(0)
            models.append((ScoreModel(build_unet(preset.model, channels=channels, size=size), sde,
                                      prediction=preset.model.prediction).to(device).eval(),
                           (channels, size, size)))
    for score, shape in models:
        table(args, score, sde, shape, device, peaks, batches, compile_modes, precisions)

    score, shape = models[0]
    if args.run_dir:
        decisions(args, score, sde, shape, device, compile_modes)
    if args.profile:
        profile(score, sde, shape, device, batches[0], args.steps)


def table(args, score, sde, shape, device, peaks, batches, compile_modes, precisions) -> None:
    n_params = sum(p.numel() for p in score.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        score(torch.randn(1, *shape, device=device), torch.full((1,), 0.5, device=device))
    flops = counter.get_total_flops()
    levels = len(score.net.down_blocks)
    attention = [shape[-1] // 2**k for k, b in enumerate(score.net.down_blocks) if type(b).__name__.startswith("Attn")]
    print(f"\n{shape[-1]} px: {levels} levels, attention at {attention or 'none'} px; {n_params / 1e6:.2f} M parameters, "
          f"{flops / 1e6:.1f} MFLOP per image per evaluation")
    first_batch = max(batches[0], 42)  # images 35..41 against a batch of 7
    reference = draw(ContinuousModel(score, sde, image_shape=shape), Mode("fp32"), range(first_batch), args.steps,
                     device)

    print(f"| mode | batch | images x NFE / s | share of the peak | first call s | batch {first_batch} vs 7 | vs fp32 |")
    print("|---|---|---|---|---|---|---|")
    for mode in modes(device, compile_modes):
        if mode.precision not in precisions:
            continue
        model = make_model(score, sde, mode, shape)
        sync(device)
        t0 = time.perf_counter()
        full = draw(model, mode, range(first_batch), args.steps, device)  # the first call (the compile included)
        sync(device)
        first = time.perf_counter() - t0
        seven = draw(model, mode, range(35, 42), args.steps, device)
        invariance = int(np.abs(full[35:42].astype(int) - seven.astype(int)).max())
        drift = int(np.abs(full.astype(int) - reference.astype(int)).max())
        peak = peaks["bf16" if mode.precision == "bf16" else ("tf32" if mode.precision == "tf32" else "fp32")]
        slow = device.type == "cpu" and mode.precision == "bf16"  # emulated: the first batch size only
        for b in batches[:1] if slow else batches:
            if b != first_batch:
                draw(model, mode, range(b), 2, device)  # compile/warm this shape
            sync(device)
            t0 = time.perf_counter()
            draw(model, mode, range(b), args.steps, device)
            sync(device)
            rate = b * args.steps / (time.perf_counter() - t0)
            print(f"| {mode.name} | {b} | {rate:.0f} | {100 * rate * flops / peak:.1f}% | {first:.1f} | "
                  f"{invariance} | {drift} |", flush=True)


def decisions(args, score, sde, shape, device, compile_modes) -> None:
    """How many of the count's decisions change between fp32 eager and each mode on the same (seed, i)."""
    from diffaudit.adversary.stage import load_detectors
    from diffaudit.adversary.detectors import call_detector

    detectors = load_detectors(Path(args.run_dir), device=str(device))
    flags = {}
    print(f"\n| mode | \\|q\\| of {args.n} | decisions changed against fp32 | largest pixel difference |")
    print("|---|---|---|---|")
    ref = None
    for mode in [m for m in modes(device, compile_modes) if not m.channels_last]:
        model = make_model(score, sde, mode, shape)
        images = np.concatenate([draw(model, mode, range(lo, min(lo + 128, args.n)), args.decision_steps, device, seed=0)
                                 for lo in range(0, args.n, 128)])
        flags[mode.name] = np.logical_and.reduce([call_detector(d, images, n) for n, d in detectors.items()])
        ref = images if ref is None else ref
        changed = int((flags[mode.name] != flags["fp32"]).sum())
        print(f"| {mode.name} | {int(flags[mode.name].sum())} | {changed} | "
              f"{int(np.abs(images.astype(int) - ref.astype(int)).max())} |", flush=True)


def profile(score, sde, shape, device, batch: int, steps: int) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    model = ContinuousModel(score, sde, image_shape=shape)
    draw(model, Mode("fp32"), range(batch), 2, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        draw(model, Mode("fp32"), range(batch), steps, device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nfp32 eager, batch {batch}, {steps} steps: time by operator (self time)")
    print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=40))


if __name__ == "__main__":
    main()
