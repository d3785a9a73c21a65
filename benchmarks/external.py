"""Sampling throughput of a diffusers model through diffaudit against diffusers' own pipeline call on the same model
and batch, and the agreement of the two.

    python benchmarks/external.py                           # a UNet2DModel like examples/train_diffusers.py's default
    python benchmarks/external.py --model runs/ext-model --sampler ddpm --steps 100

diffaudit draws each image's noise from the image's own generator (so image i does not depend on its batch); the
pipeline is called with one generator for the batch, as users call it. Figures: images x network evaluations per
second for each, their ratio (diffaudit / pipeline), and for DDIM (eta = 0) the largest difference between the two
from the same initial noise.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

from diffaudit.diffusion.discrete import DiscreteModel
from diffaudit.diffusion.rng import ImageNoise
from diffaudit.models.load import load_model


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a saved diffusers pipeline (default: a fresh UNet2DModel)")
    ap.add_argument("--sampler", default="ddim", choices=["ddpm", "ddim"])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.model:
        model = load_model(args.model, image_shape=(1, 28, 28), device="cpu")
        unet = model.net
    else:
        torch.manual_seed(0)
        unet = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                           layers_per_block=1, down_block_types=("DownBlock2D",) * 3,
                           up_block_types=("UpBlock2D",) * 3, norm_num_groups=8).eval()
        model = DiscreteModel(unet, DDPMScheduler().config, image_shape=(1, 28, 28))
    cls = {"ddpm": (DDPMPipeline, DDPMScheduler), "ddim": (DDIMPipeline, DDIMScheduler)}[args.sampler]
    pipe = cls[0](unet=unet, scheduler=cls[1].from_config(model.config))
    pipe.set_progress_bar_config(disable=True)
    b, s = args.batch, args.steps

    def ours():
        model.generate(indices=range(b), seed=0, sampler=args.sampler, steps=s)

    def theirs():
        with torch.no_grad():
            pipe(batch_size=b, num_inference_steps=s, generator=torch.Generator().manual_seed(0), output_type="np")

    ours(), theirs()  # warm-up
    t_ours, t_theirs = best_of(ours, args.repeats), best_of(theirs, args.repeats)
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"UNet2DModel, {n_params / 1e6:.2f} M parameters; {args.sampler}, {s} steps, batch {b}, "
          f"{torch.get_num_threads()} threads, best of {args.repeats}")
    print(f"diffaudit: {t_ours:7.2f} s  {b * s / t_ours:8.1f} images x NFE / s")
    print(f"pipeline : {t_theirs:7.2f} s  {b * s / t_theirs:8.1f} images x NFE / s")
    print(f"ratio (diffaudit / pipeline throughput): {t_theirs / t_ours:.3f}")
    if args.sampler == "ddim":
        gens = ImageNoise(seed=0, indices=range(b), shape=model.model_shape).generators
        with torch.no_grad():
            ref = pipe(batch_size=b, num_inference_steps=s, generator=gens, eta=0.0, output_type="np").images
        x = model.run(indices=range(b), seed=0, sampler="ddim", steps=s)
        mine = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
        print(f"DDIM, same initial noise: largest difference to DDIMPipeline {np.abs(mine - ref).max():.2e}")


if __name__ == "__main__":
    main()
