"""Train a diffusers DDPM on a folder exported by ``diffaudit export``: the kind of script a hospital already runs.

    diffaudit prepare --run-dir runs/ext --n-train 16
    diffaudit export --run-dir runs/ext --format imagefolder --out runs/ext-data
    python examples/train_diffusers.py --data runs/ext-data --out runs/ext-model --steps 3000
    diffaudit audit --run-dir runs/ext --model runs/ext-model

It is plain diffusers: ``UNet2DModel``, ``DDPMScheduler.add_noise``, the noise-prediction loss, an EMA of the weights
(``EMAModel``) and ``DDPMPipeline.save_pretrained``. Nothing in it knows about the audit, except that it copies the
export's ``export.json`` beside the model, which lets the audit confirm the model was trained on that set.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from PIL import Image


def load_folder(folder: Path) -> torch.Tensor:
    """The exported images as float [N, C, H, W] in [-1, 1] (an imagefolder export's metadata.jsonl, or train.npz)."""
    if (folder / "train.npz").is_file():
        with np.load(folder / "train.npz") as f:
            images = f["train_images"]
        images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    else:
        rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line]
        arrays = [np.asarray(Image.open(folder / r["file_name"])) for r in rows]
        images = np.stack([a[None] if a.ndim == 2 else a.transpose(2, 0, 1) for a in arrays])
    return torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a folder written by diffaudit export")
    ap.add_argument("--out", required=True, help="where to save the pipeline (save_pretrained)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--channels", default="32,64,64", help="UNet block_out_channels")
    ap.add_argument("--prediction-type", default="epsilon", choices=["epsilon", "v_prediction", "sample"])
    ap.add_argument("--beta-schedule", default="linear", choices=["linear", "scaled_linear", "squaredcos_cap_v2"])
    ap.add_argument("--timesteps", type=int, default=1000, help="num_train_timesteps")
    ap.add_argument("--ema-decay", type=float, default=0.995)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    data = Path(args.data)
    images = load_folder(data).to(args.device)
    n, c, size, _ = images.shape
    channels = tuple(int(v) for v in args.channels.split(","))
    unet = UNet2DModel(sample_size=size, in_channels=c, out_channels=c, block_out_channels=channels, layers_per_block=1,
                       down_block_types=("DownBlock2D",) * len(channels), up_block_types=("UpBlock2D",) * len(channels),
                       norm_num_groups=min(8, channels[0])).to(args.device)
    scheduler = DDPMScheduler(num_train_timesteps=args.timesteps, beta_schedule=args.beta_schedule,
                              prediction_type=args.prediction_type)
    ema = EMAModel(unet.parameters(), decay=args.ema_decay, model_cls=UNet2DModel, model_config=unet.config)
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr)
    start = time.perf_counter()
    for step in range(args.steps):
        x0 = images[torch.randint(0, n, (args.batch_size,), device=args.device)]
        noise = torch.randn_like(x0)
        t = torch.randint(0, args.timesteps, (args.batch_size,), device=args.device)
        xt = scheduler.add_noise(x0, noise, t)
        target = {"epsilon": noise, "sample": x0, "v_prediction": scheduler.get_velocity(x0, noise, t)}[args.prediction_type]
        loss = F.mse_loss(unet(xt, t).sample, target)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.step(unet.parameters())
        if step % max(1, args.steps // 10) == 0 or step == args.steps - 1:
            print(f"step {step:6d}  loss {loss.item():.4f}  {time.perf_counter() - start:.0f} s", flush=True)
    ema.copy_to(unet.parameters())
    out = Path(args.out)
    DDPMPipeline(unet=unet.eval(), scheduler=scheduler).save_pretrained(out)
    if (data / "export.json").is_file():
        shutil.copy(data / "export.json", out / "export.json")
    print(f"{n} images, {args.steps} steps in {time.perf_counter() - start:.0f} s -> {out}")


if __name__ == "__main__":
    main()
