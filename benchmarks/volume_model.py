"""The 3D score network (MONAI's DiffusionModelUNet under the sub-VP SDE) on 16 IXI volumes: cost per step and how
many training steps it takes to memorise them.

Prepares the IXI T1 volumes at ``--size`` (``fit`` resize, patients by ``^(IXI\\d{3})``, seed 0, N_D = 16, the ball
on x_p), trains the ``cpu`` preset's network (or ``--widths``) with ``--batch`` volumes per step, and after every
``--every`` steps draws ``--n`` samples (Euler-Maruyama, 100 steps, sampling seed 1). Prints, per checkpoint: the
training seconds and milliseconds per step, the sampling seconds, the median voxel RMSE from a sample to its nearest
training volume, how many samples lie within RMSE 0.08 of one (intensities in [0, 1]), how many distinct volumes they
copy, and the samples on x_p.

    python benchmarks/volume_model.py --steps 6000 --every 1500 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffaudit.config import ModelConfig, PrepareConfig, SampleConfig, TrainConfig
from diffaudit.data.prepare import build_training_set, prepare_run
from diffaudit.diffusion.generative import ContinuousModel
from diffaudit.diffusion.networks import resolve
from diffaudit.diffusion.sde import SubVPSDE
from diffaudit.generate import generate_shards, iter_shards
from diffaudit.training.loop import load_score_model, train
from patch import COPY_RMSE, nearest  # benchmarks/patch.py: RMSE to the nearest training image, any shape

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ixi-t1"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="32,32,32")
    ap.add_argument("--widths", default="16,32,32")
    ap.add_argument("--patch", default="auto")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--every", type=int, default=1500)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--keep", type=Path, default=None, help="keep the run here (default: a temporary folder)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.size.split(","))
    widths = tuple(int(v) for v in args.widths.split(","))
    model_cfg = ModelConfig(block_out_channels=widths, attention_levels=(False,) * len(widths), prediction="v",
                            patch=args.patch if args.patch == "auto" else int(args.patch))
    with tempfile.TemporaryDirectory() as tmp:
        run = (args.keep or Path(tmp)) / "run"
        manifest = prepare_run(run, PrepareConfig(data=str(args.data), size=size, fit="resize", n_train=16, seed=0,
                                                  patient_pattern=r"^(IXI\d{3})"), log=lambda *_: None, progress=False)
        volumes = build_training_set(manifest)
        x_p = manifest["fingerprint"]["position"]
        resolved = resolve(model_cfg, volumes.shape[1:])
        grid = "x".join(str(s // resolved.patch) for s in size)
        print(f"IXI {args.size}, N_D = 16, network {widths} on {resolved.patch}^3 patches ({grid} grid), batch "
              f"{args.batch}, lr {args.lr:g}, {torch.get_num_threads()} threads; copy: a sample within RMSE {COPY_RMSE} "
              "of a training volume")
        print("| steps | train s (ms/step) | sample s | median nearest RMSE | copies | volumes copied | x_p |")
        print("|---|---|---|---|---|---|---|")
        folder, total = run / "train", 0.0
        for steps in range(args.every, args.steps + 1, args.every):
            cfg = TrainConfig(steps=steps, batch_size=args.batch, lr=args.lr, checkpoint_every=args.every)
            t0 = time.perf_counter()
            train(folder, volumes, model_cfg=model_cfg, train_cfg=cfg, sde=SubVPSDE(), resume=True, device="cpu",
                  progress=False)
            seconds = time.perf_counter() - t0
            total += seconds
            model, _ = load_score_model(folder, device="cpu")
            t0 = time.perf_counter()
            out = generate_shards(folder / f"samples-{steps}", ContinuousModel(model, model.sde,
                                                                              image_shape=volumes.shape[1:]),
                                  SampleConfig(n=args.n, steps=100, batch_size=args.n, seed=1), device="cpu",
                                  progress=False)
            sampled = time.perf_counter() - t0
            d, j = nearest(np.concatenate([x for _, x in iter_shards(out)]), volumes)
            copies = d < COPY_RMSE
            per_volume = np.bincount(j[copies], minlength=len(volumes))
            print(f"| {steps} | {total:.0f} ({1000 * seconds / args.every:.0f}) | {sampled:.0f} | {np.median(d):.3f} | "
                  f"{copies.sum()}/{args.n} | {(per_volume > 0).sum()}/{len(volumes)} | {per_volume[x_p]} |", flush=True)


if __name__ == "__main__":
    main()
