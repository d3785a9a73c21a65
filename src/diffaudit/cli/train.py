"""``diffaudit train``: train the score model on the prepared set."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import LR_SCHEDULES, override
from ..diffusion.sde import SDES
from ..presets import PRESETS, get_preset
from .common import _dp_config, _load_manifest, _say
from .options import Formatter, _example, common, device_and_data, dp_options


def cmd_train(args: argparse.Namespace) -> None:
    from ..audit.engine.stages import train_run
    from ..digests import record_model_digests
    from ..data.prepare import classes_of
    from ..diffusion.sde import make_sde

    run = Path(args.run_dir)
    preset = get_preset(args.preset)
    train_cfg = override(preset.train, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         ema_decay=args.ema_decay, checkpoint_every=args.checkpoint_every, lr_schedule=args.lr_schedule,
                         decay_steps=args.decay_steps)
    sde = make_sde(args.sde, **{k: v for k, v in (("beta_min", args.beta_min), ("beta_max", args.beta_max)) if v is not None})
    dp = _dp_config(args)
    manifest = _load_manifest(run)
    model_cfg = preset.model
    if args.class_conditional:
        model_cfg = override(model_cfg, num_classes=classes_of(manifest, data_root=args.data_root))
    summary = train_run(run, model_cfg=model_cfg, train_cfg=train_cfg, sde=sde, dp=dp, resume=args.resume,
                        data_root=args.data_root, device=args.device, progress=not args.quiet)
    record_model_digests(run / "train")  # what 'diffaudit verify' checks the weights against
    path = run / "train" / "model.safetensors"
    if dp is not None:
        _say(f"DP model ({args.preset} preset, {train_cfg.steps} steps): epsilon at delta = {dp.delta:g}: "
             + ", ".join(f"{k[len('epsilon_'):]} {v:.3g}" for k, v in summary.items() if k.startswith("epsilon_"))
             + f" -> {path}")
        return
    _say(f"model ({args.preset} preset, {train_cfg.steps} steps, {sde.name} SDE) -> {path}")


def add_parser(sub) -> None:
    p = sub.add_parser("train", formatter_class=Formatter, help="train the score model on the prepared set",
                       description="Train a score model (a diffusers U-Net for images, MONAI's 3D DiffusionModelUNet for "
                                   "volumes) by denoising score matching (Eq. 4, lambda(t) = sigma_t^2) on the training "
                                   "set of manifest.json. Writes <run>/train/ with checkpoints (safetensors + JSON), "
                                   "loss.csv and the EMA model (also in diffusers' or MONAI's own layout).",
                       epilog=_example("""
                            diffaudit train --run-dir runs/b32 --preset cpu --steps 3000
                            diffaudit train --run-dir runs/b32 --preset cpu --steps 6000 --resume   # continue / extend"""))
    common(p)
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="model size and training schedule")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--lr-schedule", default=None, choices=LR_SCHEDULES,
                   help="after the warm-up: constant, or cosine (decays to 0 at --steps; such a run cannot be extended "
                        "with --resume) (default: the preset's)")
    p.add_argument("--decay-steps", type=int, default=None,
                   help="with --lr-schedule cosine: decay over the last N steps only (default: every step after the "
                        "warm-up)")
    p.add_argument("--ema-decay", type=float, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--sde", default="subvp", choices=list(SDES), help="subvp (the paper's), vp or ve")
    p.add_argument("--beta-min", type=float, default=None, help="VP/sub-VP beta_min (default 0.1)")
    p.add_argument("--beta-max", type=float, default=None, help="VP/sub-VP beta_max (default 20)")
    p.add_argument("--resume", action="store_true", help="continue an unfinished or shorter run from its last checkpoint")
    p.add_argument("--class-conditional", action="store_true", help="condition the model on the dataset's class labels")
    dp_options(p)
    device_and_data(p)
    p.set_defaults(func=cmd_train)
