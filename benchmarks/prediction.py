"""eps against v: what the network's output parameterisation does to a small U-Net's samples.

Trains the ``cpu`` preset U-Net on the 16 images of a BreastMNIST run (the demo's set, seed 0) twice, once predicting
eps and once v (``ModelConfig.prediction``), with the same seed and steps, unpatched (``patch=1``: the network the
comparison was made with, before the preset took 2 x 2 patches at 64 px), then for each model prints:

* how much of the noise's image mean (its DC) the network gives at t = 0.6 / 0.9 / 1.0 (the share of its variance
  explained; eps_theta is formed as the score model forms it, so for v it includes the fixed skip),
* what that error does to the denoised mean, (sigma_t / alpha_t) x the DC error, in [-1, 1] pixel units,
* 64 samples (EM, 100 steps): their mean brightness against the training images', and how many are nearly black
  (mean < 0.1) or white (mean > 0.9).

Usage: python benchmarks/prediction.py [--size 64] [--steps 1000] [--batch-size 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffaudit.config import PrepareConfig
from diffaudit.data.prepare import build_training_set, prepare_run
from diffaudit.diffusion.samplers import euler_maruyama, time_grid
from diffaudit.diffusion.sde import SubVPSDE
from diffaudit.presets import PRESETS
from diffaudit.training.loop import load_score_model, train

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "medmnist"


@torch.no_grad()
def dc_explained(model, x0: torch.Tensor, t: float, repeats: int = 8) -> tuple[float, float]:
    """(share of the noise's DC variance the model gives, the denoised mean's error in pixel units) at time t."""
    g = torch.Generator().manual_seed(0)
    sde, errors, truths = model.sde, [], []
    for _ in range(repeats):
        tt = torch.full((len(x0),), t)
        alpha, sigma = sde.coefficients(tt)
        z = torch.randn(x0.shape, generator=g)
        x_t = alpha.view(-1, 1, 1, 1) * x0 + sigma.view(-1, 1, 1, 1) * z
        eps = -model(x_t, tt) * sigma.view(-1, 1, 1, 1)
        errors.append((eps - z).mean((1, 2, 3)))
        truths.append(z.mean((1, 2, 3)))
    e, z = torch.cat(errors), torch.cat(truths)
    ratio = float(sde.coefficients(torch.tensor([t]))[1] / sde.coefficients(torch.tensor([t]))[0])
    return 1 - float(e.var() / z.var()), float(e.std()) * ratio


@torch.no_grad()
def brightness(model, shape: tuple[int, ...], n: int = 64) -> np.ndarray:
    torch.manual_seed(0)
    x = torch.randn(n, *shape)
    out = euler_maruyama(model, model.sde, x, time_grid(model.sde, 100), noise=lambda: torch.randn_like(x))
    return ((out.clamp(-1, 1) + 1) / 2).flatten(1).mean(1).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        size = None if args.size == 28 else args.size
        manifest = prepare_run(run, PrepareConfig(dataset="breastmnist", n_train=16, seed=0, size=size),
                               data_root=args.data, log=lambda *_: None, progress=False)
        images = build_training_set(manifest, data_root=args.data)
        x0 = torch.from_numpy(images).float() / 127.5 - 1
        print(f"BreastMNIST {args.size} px, N_D = 16, {args.steps} steps at batch {args.batch_size}, "
              f"{torch.get_num_threads()} threads; training images' mean brightness {images.mean() / 255:.3f}")
        cpu = PRESETS["cpu"]
        for prediction in ("eps", "v"):
            t0 = time.perf_counter()
            train(run / prediction, images, model_cfg=dataclasses.replace(cpu.model, prediction=prediction, patch=1),
                  train_cfg=dataclasses.replace(cpu.train, steps=args.steps, batch_size=args.batch_size,
                                                checkpoint_every=args.steps),
                  sde=SubVPSDE(), device="cpu", progress=False)
            seconds = time.perf_counter() - t0
            model, _ = load_score_model(run / prediction, device="cpu")
            dc = [dc_explained(model, x0, t) for t in (0.6, 0.9, 1.0)]
            means = brightness(model, x0.shape[1:])
            print(f"{prediction:>3}: trained in {seconds:.0f} s; DC explained at t = 0.6 / 0.9 / 1.0: "
                  + " / ".join(f"{e:.2f}" for e, _ in dc) + "; denoised-mean error " + " / ".join(f"{m:.2f}" for _, m in dc)
                  + f"; samples' mean brightness {means.mean():.3f}, black {int((means < 0.1).sum())} and white "
                  f"{int((means > 0.9).sum())} of {len(means)}", flush=True)


if __name__ == "__main__":
    main()
