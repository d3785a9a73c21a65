"""Throughput of the `cpu` preset on this machine: sampling (images/s per network evaluation) against the
FLOP-bound limit, and training (images/s).

FLOPs per image come from torch.utils.flop_counter over one forward pass; the limit is a measured float32
matmul peak (2048^3 products), so the ratio says how far the U-Net is from what the cores can do.

    python benchmarks/throughput.py [--preset cpu] [--batch 128]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffaudit.presets import get_preset
from diffaudit.diffusion.score import ScoreModel
from diffaudit.diffusion.losses import dsm_loss
from diffaudit.diffusion.sde import SubVPSDE
from diffaudit.diffusion.unet import build_unet


def timed(fn, repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--channels", type=int, default=1)
    args = ap.parse_args()
    preset = get_preset(args.preset)
    sde = SubVPSDE()
    torch.manual_seed(0)
    net = build_unet(preset.model, channels=args.channels, size=28)
    model = ScoreModel(net, sde, prediction=preset.model.prediction)
    n_params = sum(p.numel() for p in net.parameters())
    x = torch.randn(args.batch, args.channels, 28, 28)
    t = torch.rand(args.batch) * 0.99 + 0.01

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x[:1], t[:1])
    flops_per_image = counter.get_total_flops()

    a = torch.randn(2048, 2048)
    peak = 2 * 2048**3 / timed(lambda: a @ a, 10)

    with torch.no_grad():
        sec = timed(lambda: model(x, t), 5)
    per_nfe = args.batch / sec
    achieved = per_nfe * flops_per_image

    model.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    bs = preset.train.batch_size
    xb, tb, zb = x[:bs], t[:bs], torch.randn(bs, args.channels, 28, 28)

    def step():
        opt.zero_grad()
        dsm_loss(model, sde, xb, tb, zb).mean().backward()
        opt.step()

    train_rate = bs / timed(step, 10)

    print(f"preset {args.preset}: {n_params / 1e6:.3f} M parameters, {flops_per_image / 1e6:.1f} MFLOP per image "
          f"per network evaluation; torch threads {torch.get_num_threads()}")
    print(f"matmul peak (fp32, 2048^3): {peak / 1e9:.1f} GFLOP/s")
    print(f"sampling: {per_nfe:.0f} images/s per network evaluation (batch {args.batch}) = "
          f"{achieved / 1e9:.2f} GFLOP/s = {100 * achieved / peak:.1f}% of the matmul peak")
    print(f"  -> {per_nfe / preset.sample.steps:.2f} images/s with the preset's {preset.sample.steps}-step "
          f"Euler-Maruyama sampler")
    print(f"training: {train_rate:.0f} images/s (batch {bs}, forward + backward + AdamW)")


if __name__ == "__main__":
    main()
