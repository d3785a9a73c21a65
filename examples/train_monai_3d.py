"""Train a MONAI 3D DDPM on volumes exported by ``diffaudit export``: the kind of script a team that trains MONAI
models already runs.

    diffaudit prepare --run-dir runs/ixi --data ../shared/data/ixi-t1 --size 32,32,32 --fit resize --n-train 16
    diffaudit export --run-dir runs/ixi --format nifti --out runs/ixi-data
    python examples/train_monai_3d.py --data runs/ixi-data --out runs/ixi-model --steps 3000
    diffaudit audit --run-dir runs/ixi --model runs/ixi-model --detector nn

It is plain MONAI, as its 3D diffusion tutorials train: ``DiffusionModelUNet(spatial_dims=3)``, a ``DDPMScheduler``
(scaled-linear betas), ``DiffusionInferer`` for the noise-prediction loss, Adam. With ``--latent`` it is MONAI's 3D
latent diffusion tutorial in small: an ``AutoencoderKL(spatial_dims=3)`` trained first (L1 reconstruction and a KL
term, on intensities in [0, 1]), the scale factor 1 / std of its latents, then the diffusion network trained on the
scaled latents with ``LatentDiffusionInferer``. It saves the weights as safetensors and the networks' and scheduler's
arguments in ``monai.json``, the layout ``diffaudit.models.load`` reads, and copies the export's ``export.json`` beside
them, which lets the audit confirm the model was trained on that set. Nothing in it knows which volume is the canary.
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
from monai.inferers import DiffusionInferer, LatentDiffusionInferer
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
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


def train_autoencoder(volumes: torch.Tensor, args: argparse.Namespace, out: Path) -> tuple[AutoencoderKL, dict]:
    """MONAI's AutoencoderKL trained on ``volumes`` (in [0, 1]) with L1 reconstruction and a small KL weight, as the
    tutorial's first stage (without its adversarial and perceptual terms); saved to ``autoencoder.safetensors``."""
    channels = [int(c) for c in args.ae_channels.split(",")]
    ae_args = {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "channels": channels, "latent_channels": 3,
               "num_res_blocks": 1, "norm_num_groups": min(8, channels[0]),
               "attention_levels": [False] * len(channels)}
    autoencoder = AutoencoderKL(**ae_args).to(volumes.device)
    opt = torch.optim.Adam(autoencoder.parameters(), lr=1e-3)
    for step in range(1, args.ae_steps + 1):
        batch = volumes[torch.randint(len(volumes), (args.batch_size,), device=volumes.device)]
        recon, z_mu, z_sigma = autoencoder(batch)
        kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1).sum(dim=list(range(1, z_mu.ndim)))
        loss = F.l1_loss(recon, batch) + 1e-6 * kl.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.ae_steps:
            print(f"autoencoder step {step} loss {loss.item():.4f}", flush=True)
    autoencoder.eval().requires_grad_(False)
    save_file({k: v.detach().cpu().contiguous() for k, v in autoencoder.state_dict().items()},
              str(out / "autoencoder.safetensors"))
    return autoencoder, {"class": "AutoencoderKL", "args": ae_args, "weights": "autoencoder.safetensors",
                         "pixel_range": [0, 1]}


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
    ap.add_argument("--latent", action="store_true", help="a latent model: train an AutoencoderKL first")
    ap.add_argument("--ae-steps", type=int, default=1000, help="--latent: the autoencoder's training steps")
    ap.add_argument("--ae-channels", default="16,32", help="--latent: AutoencoderKL channels (each level but the "
                                                           "last halves every side)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    data = Path(args.data)
    volumes = load_volumes(data).to(args.device)
    channels = [int(c) for c in args.channels.split(",")]
    spec: dict = {"format": "diffaudit-monai/1"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    autoencoder, in_channels, scale = None, 1, 1.0
    if args.latent:
        autoencoder, spec["autoencoder"] = train_autoencoder((volumes + 1) / 2, args, out)  # MONAI's range: [0, 1]
        with torch.no_grad():
            scale = 1.0 / float(autoencoder.encode_stage_2_inputs((volumes[:8] + 1) / 2).flatten().std())
        spec["autoencoder"]["scale_factor"] = scale
        in_channels = spec["autoencoder"]["args"]["latent_channels"]
    net_args = {"spatial_dims": 3, "in_channels": in_channels, "out_channels": in_channels, "channels": channels,
                "attention_levels": [False] * (len(channels) - 1) + [True], "num_res_blocks": 1,
                "num_head_channels": channels[-1], "norm_num_groups": min(8, channels[0])}
    sched_args = {"num_train_timesteps": args.timesteps, "schedule": "scaled_linear_beta", "beta_start": 0.0005,
                  "beta_end": 0.0195}
    model = DiffusionModelUNet(**net_args).to(args.device)
    scheduler = DDPMScheduler(**sched_args)
    inferer = DiffusionInferer(scheduler) if autoencoder is None else LatentDiffusionInferer(scheduler, scale_factor=scale)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    t0 = time.time()
    for step in range(1, args.steps + 1):
        batch = volumes[torch.randint(len(volumes), (args.batch_size,), device=volumes.device)]
        timesteps = torch.randint(0, args.timesteps, (len(batch),), device=batch.device).long()
        if autoencoder is None:
            noise = torch.randn_like(batch)
            loss = F.mse_loss(inferer(inputs=batch, diffusion_model=model, noise=noise, timesteps=timesteps), noise)
        else:
            with torch.no_grad():
                noise = torch.randn_like(autoencoder.encode_stage_2_inputs((batch + 1) / 2))
            loss = F.mse_loss(inferer(inputs=(batch + 1) / 2, autoencoder_model=autoencoder, diffusion_model=model,
                                      noise=noise, timesteps=timesteps), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps:
            print(f"step {step} loss {loss.item():.4f} ({time.time() - t0:.0f} s)", flush=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    spec.update({"network": {"class": "DiffusionModelUNet", "args": net_args},
                 "scheduler": {"class": "DDPMScheduler", "args": sched_args}, "weights": "model.safetensors"})
    (out / "monai.json").write_text(json.dumps(spec, indent=1))
    if (data / "export.json").is_file():
        shutil.copyfile(data / "export.json", out / "export.json")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
