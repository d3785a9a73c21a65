"""The `cpu` network at 64 px, whole or on 2 x 2 patches (``ModelConfig.patch``): cost per step and memorisation.

Trains the ``cpu`` preset's model on the 16 images of the 64-px BreastMNIST demo set (seed 0, the SAF on x_p) once
per patch setting, with the same seed, and after every ``--every`` steps draws ``--n`` samples (Euler-Maruyama,
100 steps, sampling seed 1). Prints, per checkpoint: the training seconds and milliseconds per step, the sampling
seconds, how many samples lie within pixel RMSE 0.08 of a training image (pixel range [0, 1]; the images' nearest
other training image is 0.14-0.24 away), how many distinct training images they copy, the fewest and most samples
on one image, and the samples on x_p.

    python benchmarks/patch.py --patches 1,auto --steps 3500 --every 500 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffaudit.config import PrepareConfig, SampleConfig
from diffaudit.data.prepare import build_training_set, prepare_run
from diffaudit.diffusion.generative import ContinuousModel
from diffaudit.diffusion.sde import SubVPSDE
from diffaudit.diffusion.unet import model_config_for
from diffaudit.generate import generate_shards, iter_shards
from diffaudit.presets import get_audit_preset
from diffaudit.training.loop import load_score_model, train

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "medmnist"
COPY_RMSE = 0.08


def nearest(samples: np.ndarray, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = samples.reshape(len(samples), -1).astype(np.float64) / 255
    x = images.reshape(len(images), -1).astype(np.float64) / 255
    d = np.sqrt(((s[:, None] - x[None]) ** 2).mean(-1))
    return d.min(1), d.argmin(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--patches", default="1,auto", help="comma-separated ModelConfig.patch values")
    ap.add_argument("--steps", type=int, default=3500)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    demo = get_audit_preset("cpu-demo")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        manifest = prepare_run(run, PrepareConfig(dataset="breastmnist", n_train=16, seed=0, size=args.size),
                               data_root=args.data, log=lambda *_: None, progress=False)
        images = build_training_set(manifest, data_root=args.data)
        x_p = manifest["fingerprint"]["position"]
        print(f"BreastMNIST {args.size} px, N_D = 16, batch {demo.train.batch_size}, {torch.get_num_threads()} threads; "
              f"copy: sample within RMSE {COPY_RMSE} of a training image")
        print("| patch | network | steps | train s (ms/step) | sample s | copies | images copied | fewest-most per image "
              "| x_p |")
        print("|---|---|---|---|---|---|---|---|---|")
        for patch in args.patches.split(","):
            model_cfg = dataclasses.replace(demo.model, patch=patch if patch == "auto" else int(patch))
            resolved = model_config_for(model_cfg, args.size)
            shape = f"{resolved.block_out_channels} on {args.size // resolved.patch} px"
            folder, total = run / f"patch-{patch}", 0.0
            for steps in range(args.every, args.steps + 1, args.every):
                cfg = dataclasses.replace(demo.train, steps=steps, checkpoint_every=args.every)
                t0 = time.perf_counter()
                train(folder, images, model_cfg=model_cfg, train_cfg=cfg, sde=SubVPSDE(), resume=True, device="cpu",
                      progress=False)
                seconds = time.perf_counter() - t0
                total += seconds
                model, _ = load_score_model(folder, device="cpu")
                t0 = time.perf_counter()
                out = generate_shards(folder / f"samples-{steps}", ContinuousModel(model, model.sde,
                                                                                  image_shape=images.shape[1:]),
                                      SampleConfig(n=args.n, steps=100, batch_size=args.n, seed=1), device="cpu",
                                      progress=False)
                sampled = time.perf_counter() - t0
                d, j = nearest(np.concatenate([x for _, x in iter_shards(out)]), images)
                copies = d < COPY_RMSE
                per_image = np.bincount(j[copies], minlength=len(images))
                print(f"| {resolved.patch} | {shape} | {steps} | {total:.0f} ({1000 * seconds / args.every:.0f}) | "
                      f"{sampled:.0f} | {copies.sum()}/{args.n} | {(per_image > 0).sum()}/{len(images)} | "
                      f"{per_image.min()}-{per_image.max()} | {per_image[x_p]} |", flush=True)


if __name__ == "__main__":
    main()
