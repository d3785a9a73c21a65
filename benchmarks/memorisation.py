"""How many training steps does the `cpu` preset need before its samples sit on training images?

Trains the `cpu` preset on N_D images of a MedMNIST split (with the SAF on x_p), and after every `--every`
steps draws `--n` samples (Euler–Maruyama) and measures, for each sample, the RMSE to its nearest training
image (pixel range [0, 1]) and the ratio d1/d2 of the nearest to the second-nearest distance. A sample counts
as a copy when its RMSE to the nearest training image is below half the median distance between a training
image and its nearest other training image (MedMNIST has near-duplicates, so the d1/d2 < 1/3 rule of Carlini
et al. 2023 is printed beside it but not used alone). Prints one row per checkpoint.

    python benchmarks/memorisation.py --n-train 32 --steps 3000 --every 500
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
from diffaudit.data.medmnist import open_dataset
from diffaudit.data.prepare import build_training_set, make_manifest
from diffaudit.diffusion.generative import ContinuousModel
from diffaudit.diffusion.sde import SubVPSDE
from diffaudit.generate import generate_shards, iter_shards
from diffaudit.presets import get_preset
from diffaudit.training.loop import load_score_model, train


def nearest(samples: np.ndarray, train_set: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = samples.reshape(len(samples), -1).astype(np.float64) / 255
    x = train_set.reshape(len(train_set), -1).astype(np.float64) / 255
    d = np.sqrt(((s[:, None] - x[None]) ** 2).mean(-1))
    order = np.argsort(d, axis=1)
    rows = np.arange(len(s))
    return d[rows, order[:, 0]], d[rows, order[:, 1]], order[:, 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="breastmnist")
    ap.add_argument("--n-train", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--every", type=int, default=500)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--sample-steps", type=int, default=250)
    ap.add_argument("--device", default="cpu", help="the step count does not depend on it; the timings do")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()

    work = Path(args.out or tempfile.mkdtemp(prefix="memorisation-"))
    preset = get_preset("cpu")
    data = open_dataset(args.dataset, data_root=args.data_root)
    manifest = make_manifest(PrepareConfig(dataset=args.dataset, n_train=args.n_train), data)
    images = build_training_set(manifest, data=data)
    flat = images.reshape(len(images), -1).astype(np.float64) / 255
    pair = np.sqrt(((flat[:, None] - flat[None]) ** 2).mean(-1)) + np.eye(len(flat)) * 1e9
    nn_train = pair.min(1)
    threshold = float(np.median(nn_train)) / 2
    print(f"{args.dataset} N_D={args.n_train}: training-image NN RMSE min {nn_train.min():.4f}, median "
          f"{np.median(nn_train):.4f}; copy threshold {threshold:.4f}; torch threads {torch.get_num_threads()}")
    print("| steps | train s (total) | train img/s | sample s | median sample NN RMSE | copies | d1/d2<1/3 | x_p copies |")
    print("|---|---|---|---|---|---|---|---|")
    sde = SubVPSDE()
    x_p_pos = manifest["fingerprint"]["position"]
    total_train = 0.0
    for steps in range(args.every, args.steps + 1, args.every):
        cfg = dataclasses.replace(preset.train, steps=steps, checkpoint_every=args.every)
        t0 = time.perf_counter()
        train(work / "train", images, model_cfg=preset.model, train_cfg=cfg, sde=sde, resume=True, device=args.device,
              progress=False)
        dt_train = time.perf_counter() - t0
        total_train += dt_train
        model, _ = load_score_model(work / "train", device=args.device)
        scfg = SampleConfig(n=args.n, steps=args.sample_steps, batch_size=args.n)
        t0 = time.perf_counter()
        out = generate_shards(work / f"samples_{steps}", ContinuousModel(model, sde, image_shape=images.shape[1:]), scfg,
                              device=next(model.parameters()).device, progress=False)
        dt_sample = time.perf_counter() - t0
        samples = np.concatenate([x for _, x in iter_shards(out)])
        d1, d2, nn = nearest(samples, images)
        copies = d1 < threshold
        xp = int((copies & (nn == x_p_pos)).sum())
        print(f"| {steps} | {total_train:.0f} | {args.every * cfg.batch_size / dt_train:.0f} | {dt_sample:.0f} | "
              f"{np.median(d1):.4f} | {copies.sum()}/{len(samples)} | {(d1 / d2 < 1 / 3).sum()} | {xp} |", flush=True)
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
