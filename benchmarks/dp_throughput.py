"""DP-SGD training throughput against non-private training of the same model (images per second and the ratio).

Trains the `cpu` preset U-Net for --steps steps on N_D BreastMNIST images twice: with the ordinary loop and with
DP-SGD through Opacus (per-example gradients, clipping, noise; Poisson batches of expected size --batch-size), and
with noise multiplicity K when asked. Prints images/s of each and their ratio.

    python benchmarks/dp_throughput.py --steps 60 --batch-size 32 --n-train 128
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from diffaudit.config import DPConfig, PrepareConfig, override
from diffaudit.data.medmnist import open_dataset
from diffaudit.data.prepare import build_training_set, make_manifest
from diffaudit.diffusion.sde import SubVPSDE
from diffaudit.presets import get_preset
from diffaudit.privacy.dpsgd import train_dp
from diffaudit.training.loop import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-train", type=int, default=128)
    ap.add_argument("--multiplicity", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    preset = get_preset("cpu")
    images = build_training_set(make_manifest(PrepareConfig(n_train=args.n_train), open_dataset("breastmnist")))
    cfg = override(preset.train, steps=args.steps, batch_size=args.batch_size, checkpoint_every=10**9)
    work = Path(tempfile.mkdtemp(prefix="dp-throughput-"))
    print(f"torch threads {torch.get_num_threads()}, device {args.device}, N_D {args.n_train}, batch {args.batch_size}, "
          f"{args.steps} steps")
    t0 = time.perf_counter()
    train(work / "plain", images, model_cfg=preset.model, train_cfg=cfg, sde=SubVPSDE(), device=args.device, progress=False)
    plain = args.steps * args.batch_size / (time.perf_counter() - t0)
    print(f"| training | images/s | ratio to non-private |\n|---|---|---|\n| non-private | {plain:.0f} | 1 |")
    for k in args.multiplicity:
        t0 = time.perf_counter()
        train_dp(work / f"dp{k}", images, model_cfg=preset.model, train_cfg=cfg, sde=SubVPSDE(), device=args.device,
                 dp=DPConfig(noise_multiplier=1.0, noise_multiplicity=k, physical_batch_size=args.batch_size * 2),
                 progress=False)
        dp = args.steps * args.batch_size / (time.perf_counter() - t0)  # expected images per step
        print(f"| DP-SGD, K = {k} | {dp:.0f} images ({dp * k:.0f} rows) | {dp / plain:.2f} |", flush=True)


if __name__ == "__main__":
    main()
