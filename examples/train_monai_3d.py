"""Train a MONAI 3D DDPM on volumes exported by ``diffaudit export``: the kind of script a team that trains MONAI
models already runs.

    diffaudit prepare --run-dir runs/ixi --data ../shared/data/ixi-t1 --size 32,32,32 --fit resize --n-train 16
    diffaudit export --run-dir runs/ixi --format nifti --out runs/ixi-data
    python examples/train_monai_3d.py --data runs/ixi-data --out runs/ixi-model --steps 3000
    diffaudit audit --run-dir runs/ixi --model runs/ixi-model --detector nn

It is plain MONAI, as its 3D diffusion tutorials train: ``DiffusionModelUNet(spatial_dims=3)``, a ``DDPMScheduler``
(scaled-linear betas), ``DiffusionInferer`` for the noise-prediction loss, Adam. It saves the weights as safetensors
and the network's and scheduler's arguments in ``monai.json``, the layout ``diffaudit.models.load`` reads, and copies
the export's ``export.json`` beside them, which lets the audit confirm the model was trained on that set. Nothing in it
knows which volume is the canary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import DiffusionInferer
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDPMScheduler
from safetensors.torch import save_file


def load_volumes(folder: Path) -> torch.Tensor:
    """The exported volumes as float [N, 1, D, H, W] in [-1, 1] (a nifti export's metadata.jsonl, or train.npz)."""
    if (folder / "train.npz").is_file():
        with np.load(folder / "train.npz") as f:
            volumes = f["train_images"]
    else:
        rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines() if line]
        volumes = np.stack([np.asarray(nib.load(folder / r["file_name"]).dataobj) for r in rows])
    return torch.from_numpy(volumes[:, None].astype(np.float32) / 127.5 - 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a folder written by diffaudit export --format nifti (or npz)")
    ap.add_argument("--out", required=True, help="where to save the model (monai.json + model.safetensors)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--channels", default="32,64,64", help="DiffusionModelUNet channels")
    ap.add_argument("--timesteps", type=int, default=1000, help="num_train_timesteps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    data = Path(args.data)
    volumes = load_volumes(data).to(args.device)
    channels = [int(c) for c in args.channels.split(",")]
    net_args = {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "channels": channels,
                "attention_levels": [False] * (len(channels) - 1) + [True], "num_res_blocks": 1,
                "num_head_channels": channels[-1], "norm_num_groups": min(8, channels[0])}
    sched_args = {"num_train_timesteps": args.timesteps, "schedule": "scaled_linear_beta", "beta_start": 0.0005,
                  "beta_end": 0.0195}
    model = DiffusionModelUNet(**net_args).to(args.device)
    scheduler = DDPMScheduler(**sched_args)
    inferer = DiffusionInferer(scheduler)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    t0 = time.time()
    for step in range(1, args.steps + 1):
        batch = volumes[torch.randint(len(volumes), (args.batch_size,), device=volumes.device)]
        noise = torch.randn_like(batch)
        timesteps = torch.randint(0, args.timesteps, (len(batch),), device=batch.device).long()
        loss = F.mse_loss(inferer(inputs=batch, diffusion_model=model, noise=noise, timesteps=timesteps), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps:
            print(f"step {step} loss {loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / "monai.json").write_text(json.dumps({
        "format": "diffaudit-monai/1", "network": {"class": "DiffusionModelUNet", "args": net_args},
        "scheduler": {"class": "DDPMScheduler", "args": sched_args}, "weights": "model.safetensors"}, indent=1))
    if (data / "export.json").is_file():
        shutil.copyfile(data / "export.json", out / "export.json")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
