"""The ``train`` stage: denoising score matching of a diffusers U-Net on D_p.

Reproducibility: the batch order (a fresh permutation of D_p every epoch) and the noise of step k (times t and
Gaussian z) are drawn from generators seeded by (seed, epoch) and (seed, k), on the CPU, so they do not depend
on the device or on where a run was interrupted. A run resumed from a checkpoint therefore ends with the same
weights as an uninterrupted one. The learning rate warms up linearly and then stays constant, so extending a
finished run (``--resume`` with more ``steps``) continues exactly as a longer run would have; a cosine schedule
(``lr_schedule``) depends on the number of steps, so its runs resume only to the steps they began with.

Layout of ``<run>/train/``: ``config.json``, ``loss.csv``, ``checkpoints/step_*/``, and when done
``model.safetensors`` (EMA weights, used for sampling) with ``model.json`` (everything needed to rebuild it). Both
JSON files record the model config resolved for the images' size (its levels and attention, when ``levels`` is auto).
"""

from __future__ import annotations

import csv
import enum
import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ..config import ModelConfig, TrainConfig, from_dict, to_dict
from ..device import resolve_device
from ..diffusion.conditioning import check_conditions
from ..diffusion.losses import dsm_loss
from ..diffusion.score import SIGMA_DATA, ScoreModel, with_labels
from ..diffusion.sde import SDE, sde_from_dict
from ..diffusion.networks import build_network, is_volume, resolve
from ..errors import DiffauditError
from ..extras import require
from ..images import to_model_space
from ..io import atomic_path, check_state_dict, existing_artefact, load_tensors, read_json, save_tensors, write_json
from ..parallel import processes
from ..rng import derive_seed
from .checkpoint import list_checkpoints, load_checkpoint, save_checkpoint


class Stream(enum.IntEnum):
    """What a training seed derived from ``train.seed`` is for (``derive_seed(seed, ..., Stream.X)``). The values are
    part of every run's numbers, so they never change: a new stream takes a new value."""

    NOISE = 1  # the (t, z) draws of a step (non-private: one batch; DP: one physical batch)
    ORDER = 2  # the epoch permutations of the data order
    INIT = 3  # the model's initial weights (DP and non-private alike)
    DP_LOADER = 32  # Opacus' Poisson sampling
    DP_NOISE = 33  # the Gaussian noise DP-SGD adds to the clipped gradients


LOG_FIELDS = ("step", "loss", "grad_norm", "lr", "seconds")


class EpochOrder:
    """Batch indices: a new seeded permutation of range(n) every epoch, consumed in order."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self._cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k >= epoch - 1}
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch, Stream.ORDER))
            self._cache[epoch] = torch.randperm(self.n, generator=g)
        return self._cache[epoch]

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        out, pos, end = [], step * batch_size, (step + 1) * batch_size
        while pos < end:
            epoch, offset = divmod(pos, self.n)
            take = min(end - pos, self.n - offset)
            out.append(self._perm(epoch)[offset:offset + take])
            pos += take
        return torch.cat(out) if len(out) > 1 else out[0]


def _train_record(model_cfg: ModelConfig, train_cfg: TrainConfig, sde: SDE, image_shape: tuple[int, ...],
                  data_id: str) -> dict:
    record = {"model": to_dict(model_cfg), "train": to_dict(train_cfg), "sde": sde.to_dict(),
              "image_shape": list(image_shape), "data": data_id}
    return json.loads(json.dumps(record))  # tuples -> lists, as read back from config.json


# ---- what the private and the non-private trainer share -------------------------------------------------------
def check_images(images: np.ndarray) -> tuple[int, ...]:
    """The shape of the training images: uint8 [N, C, H, W] (images) or [N, C, D, H, W] (volumes), N >= 1."""
    if images.ndim not in (4, 5) or images.dtype != np.uint8 or len(images) == 0:
        raise DiffauditError(f"training images must be a non-empty uint8 array [N, C, H, W] (or [N, C, D, H, W] for "
                             f"volumes), got {images.dtype} {images.shape}")
    return images.shape


def init_model(model_cfg: ModelConfig, train_cfg: TrainConfig, image_shape: tuple[int, ...],
               init_from: str | Path | None = None) -> torch.nn.Module:
    """The U-Net at its seeded initial weights, the same for a private and a non-private run of one seed, or the
    weights of the finished model in the train/ folder ``init_from`` (public pretraining). Its levels follow the image
    size (``ModelConfig.levels``, :func:`~diffaudit.diffusion.unet.model_config_for`); a volume's [C, D, H, W] gets
    the 3D network (:mod:`~diffaudit.diffusion.unet3d`)."""
    with torch.random.fork_rng(devices=[]):  # diffusers initialises from the global RNG; seed it, then restore
        torch.manual_seed(derive_seed(train_cfg.seed, 0, Stream.INIT))
        net = build_network(model_cfg, image_shape)
    if init_from is not None:
        _same_prediction(model_cfg, Path(init_from))
        load_weights(net, Path(init_from))
    return net


def _same_prediction(model_cfg: ModelConfig, train_dir: Path) -> None:
    """Refuse to start from a model whose network outputs another quantity (eps against v): its weights would mean
    something else here."""
    path = train_dir / "model.json"
    if not path.is_file():
        return  # load_weights names the missing model
    model = read_json(path, expect=dict, fix="train the pretrained model again").get("model")
    if not isinstance(model, dict):
        raise DiffauditError(f"{path} holds no model config; the file was edited or damaged: train that model again")
    theirs = model.get("prediction", "eps")
    if theirs != model_cfg.prediction:
        raise DiffauditError(f"{train_dir} was trained to predict {theirs}, this model predicts {model_cfg.prediction}; "
                             f"pretrain with the same model preset (model.prediction)")


def _same_schedule(train_dir: Path, previous: dict, train_cfg: TrainConfig) -> None:
    """Refuse to resume a run whose learning rate depends on its number of steps (cosine) to another number."""
    began = (previous.get("train") or {}).get("steps")
    if train_cfg.lr_schedule != "constant" and began != train_cfg.steps:
        raise DiffauditError(
            f"{train_dir} began a {train_cfg.lr_schedule} learning-rate schedule over {began} steps; a schedule over "
            f"{train_cfg.steps} decays at other steps, so the run would not be one schedule: resume with --steps {began}, "
            "or train again in another --run-dir")


def dsm_draws(train_cfg: TrainConfig, sde: SDE, g: torch.Generator, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The training times t ~ U(eps, T) (float64) and the noise z for ``shape[0]`` rows, from generator ``g``."""
    t = train_cfg.eps + (sde.T - train_cfg.eps) * torch.rand(shape[0], generator=g, dtype=torch.float64)
    return t, torch.randn(shape, generator=g)


def learning_rate(train_cfg: TrainConfig, step: int) -> float:
    """The learning rate of ``step`` (0-based): a linear warm-up to ``lr``, then ``lr`` (constant), or ``lr`` and a
    half cosine that falls to 0 over the last ``decay_steps`` (cosine; all the steps after the warm-up by default)."""
    lr = train_cfg.lr * min(1.0, (step + 1) / max(1, train_cfg.warmup_steps))
    if train_cfg.lr_schedule == "cosine":
        start = (train_cfg.warmup_steps if train_cfg.decay_steps is None else
                 max(train_cfg.warmup_steps, train_cfg.steps - train_cfg.decay_steps))
        if step >= start:
            lr = train_cfg.lr * 0.5 * (1.0 + math.cos(math.pi * (step - start) / max(1, train_cfg.steps - start)))
    return lr


def warm_up(opt: torch.optim.Optimizer, train_cfg: TrainConfig, step: int) -> float:
    """Set the learning rate of ``step`` (:func:`learning_rate`); returns it."""
    lr = learning_rate(train_cfg, step)
    for group in opt.param_groups:
        group["lr"] = lr
    return lr


def step_loss(model: Callable, sde: SDE, x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor, y: torch.Tensor | None,
              *, step: int, checkpoints: Path | None = None) -> torch.Tensor:
    """The mean denoising score-matching loss (Eq. 4) of one batch; a non-finite loss stops the run, naming the
    last good checkpoint in ``checkpoints`` (when the run keeps them)."""
    loss = dsm_loss(with_labels(model, y), sde, x0, t, z).mean()
    if not torch.isfinite(loss):
        kept = list_checkpoints(checkpoints) if checkpoints is not None else []
        raise DiffauditError(f"the loss became {loss.item()} at step {step}; lower --lr (last good checkpoint: "
                             f"{kept[-1].name if kept else 'none'})")
    return loss


def log_row(step: int, loss: float, grad_norm: float | None, lr: float, t_wall: float) -> dict:
    return {"step": step, "loss": f"{loss:.6f}", "grad_norm": "" if grad_norm is None else f"{grad_norm:.4f}",
            "lr": f"{lr:.3g}", "seconds": f"{time.perf_counter() - t_wall:.2f}"}


def save_diffusers_layout(train_dir: Path, weights: dict[str, torch.Tensor], record: dict) -> Path:
    """The finished U-Net also in diffusers' own layout, ``<train>/unet/`` (``UNet2DModel.from_pretrained`` loads it),
    with ``diffaudit_sde.json`` beside it: the network predicts the noise (or v) of a continuous SDE, which no stock
    diffusers scheduler samples. A volume model is written in MONAI's layout instead (:func:`save_monai_layout`)."""
    if is_volume(record["image_shape"]):
        return save_monai_layout(train_dir, weights, record)
    net = build_network(from_dict(ModelConfig, record["model"]), record["image_shape"])
    net.load_state_dict(weights)
    folder = train_dir / "unet"
    net.save_pretrained(folder, safe_serialization=True)
    output = _output_rule(record)
    patch = record["model"].get("patch", 1)
    patched = {} if patch == 1 else {"patch": patch, "input": (
        f"x_t as {patch} x {patch} patches stacked as channels: the U-Net of this folder takes "
        f"torch.nn.functional.pixel_unshuffle(x_t, {patch}), and pixel_shuffle(its output, {patch}) is the output below")}
    write_json(folder / "diffaudit_sde.json", {
        "sde": record["sde"], "time_input": "t * 999 for t in (0, 1]", **patched, "output": output,
        "sample_with": "diffaudit sample --sampler em|pc|ode (the reverse SDE or probability-flow ODE of this SDE); no "
        "diffusers scheduler samples a sub-VP or VE model"})
    return folder


def _output_rule(record: dict) -> str:
    if record["model"].get("prediction", "eps") == "v":
        return (f"v: eps = c_skip x_t + c_out * output, d = alpha_t^2 s_d^2 + sigma_t^2, c_skip = sigma_t / d, c_out = "
                f"alpha_t s_d / sqrt(d), s_d = {SIGMA_DATA}, for x_t = alpha_t x_0 + sigma_t eps; score = -eps / sigma_t")
    return "eps, the noise of x_t = alpha_t x_0 + sigma_t eps; score = -eps / sigma_t"


def save_monai_layout(train_dir: Path, weights: dict[str, torch.Tensor], record: dict) -> Path:
    """A volume model's network also as MONAI writes one, ``<train>/monai/``: ``model.safetensors`` holds the
    ``DiffusionModelUNet``'s own state dict and ``monai.json`` its arguments, so that
    ``DiffusionModelUNet(**network["args"]).load_state_dict(...)`` rebuilds it with MONAI alone, and the SDE,
    patching and output it was trained with."""
    from ..diffusion.unet3d import monai_args

    cfg = from_dict(ModelConfig, record["model"])
    patch = int(cfg.patch)
    folder = train_dir / "monai"
    save_tensors(folder / "model.safetensors", {k.removeprefix("net."): v for k, v in weights.items()})
    write_json(folder / "monai.json", {
        "format": "diffaudit-sde-monai/1",
        "network": {"class": "DiffusionModelUNet", "args": monai_args(cfg, int(record["image_shape"][0]))},
        "weights": "model.safetensors", "sde": record["sde"], "time_input": "t * 999 for t in (0, 1], one per volume",
        "patch": patch, "input": (f"x_t [B, C, D, H, W] as {patch} x {patch} x {patch} patches stacked as channels: "
                                  "diffaudit.diffusion.unet3d.unshuffle(x_t, patch) in, shuffle(output, patch) out"),
        "output": _output_rule(record),
        "sample_with": "diffaudit sample --sampler em|pc|ode (the reverse SDE or probability-flow ODE of this SDE)"})
    return folder


def save_model(train_dir: Path, ema: AveragedModel, record: dict, *, steps: int, **extra) -> Path:
    """The finished model: EMA weights (and the same U-Net in diffusers' layout), then ``model.json`` last (its
    presence marks a finished run)."""
    final = train_dir / "model.safetensors"
    weights = {k: v.detach().cpu() for k, v in ema.module.state_dict().items()}
    save_tensors(final, weights, metadata={"step": str(steps)})
    save_diffusers_layout(train_dir, weights, record)
    n_params = sum(p.numel() for p in ema.module.parameters())
    write_json(train_dir / "model.json", {**record, "weights": "ema", "n_params": n_params, **extra})
    return final


def train(
    train_dir: str | Path,
    images: np.ndarray,
    *,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    sde: SDE,
    data_id: str = "",
    resume: bool = False,
    device: str | None = "auto",
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
    labels: np.ndarray | None = None,
    init_from: str | Path | None = None,
) -> Path:
    """Train a score model on uint8 ``images`` [N, C, H, W]; returns the path of ``model.safetensors``.

    ``data_id`` names the training set (the manifest's hash) so a run cannot silently continue on other data.
    An existing finished run with the same config is returned as is; a different config is refused; an
    unfinished run is continued only with ``resume``. ``callback(step, loss)`` runs after every step. A
    conditional model (``model_cfg.num_classes`` or ``covariates`` > 0) needs the images' ``labels``: int [N] classes, or
    the condition rows of :mod:`diffaudit.diffusion.conditioning`. ``init_from``
    (a train/ folder) starts from that model's weights, e.g. one pretrained on public data."""
    train_dir = Path(train_dir)
    n, *image_shape = check_images(images)
    y_all = check_conditions(labels, n, model_cfg)
    model_cfg = resolve(model_cfg, image_shape)  # levels and patch "auto": sized to the images; recorded as resolved
    record = _train_record(model_cfg, train_cfg, sde, tuple(image_shape), data_id)
    if init_from is not None:
        record["init_from"] = str(init_from)
    ckpt_dir = train_dir / "checkpoints"
    final = train_dir / "model.safetensors"

    # the same run with another number of steps may be continued (--resume), so steps are not compared here
    previous = existing_artefact(train_dir / "config.json", record, what="a training run", ignore=("train.steps",),
                                 fix="use another --run-dir, or repeat that run's options")
    if previous is not None:
        if previous == json.loads(json.dumps(record)) and (train_dir / "model.json").exists():
            return final
        if not resume:
            raise DiffauditError(
                f"{train_dir} holds an {'earlier' if final.exists() else 'unfinished'} run of this config; "
                "pass --resume to continue it"
            )
        _same_schedule(train_dir, previous, train_cfg)
    checkpoints = list_checkpoints(ckpt_dir)
    procs = processes(device)
    dev = procs.device
    if train_cfg.batch_size % procs.world:
        raise DiffauditError(f"the batch size {train_cfg.batch_size} must be a multiple of the {procs.world} processes")

    net = init_model(model_cfg, train_cfg, tuple(image_shape), init_from).to(dev)
    model = ScoreModel(net, sde, prediction=model_cfg.prediction)
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(train_cfg.ema_decay))
    opt = torch.optim.AdamW(net.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    start = 0
    if checkpoints and resume:
        state = load_checkpoint(checkpoints[-1], model=net, ema=ema, opt=opt)
        start = state["step"]
        if start > train_cfg.steps:
            raise DiffauditError(f"the last checkpoint is at step {start}, beyond --steps {train_cfg.steps}")
    elif checkpoints:
        raise DiffauditError(f"{ckpt_dir} already has checkpoints; pass --resume to continue, or use another --run-dir")
    procs.barrier()  # every process has read the old state before the main one changes it
    if procs.main:
        write_json(train_dir / "config.json", record)
        (train_dir / "model.json").unlink(missing_ok=True)  # written last: its presence marks a finished run
        _truncate_log(train_dir / "loss.csv", start)
    accelerator = None
    if procs.world > 1:  # DistributedDataParallel through accelerate; each process takes a slice of the batch
        require("accelerate", "data-parallel training")
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=dev.type == "cpu")
        model = ScoreModel(accelerator.prepare(net), sde, prediction=model_cfg.prediction)
    local = slice(procs.rank * train_cfg.batch_size // procs.world, (procs.rank + 1) * train_cfg.batch_size // procs.world)

    data = torch.from_numpy(to_model_space(images)).to(dev)
    order = EpochOrder(n, train_cfg.seed)
    bs = train_cfg.batch_size
    n_params = sum(p.numel() for p in net.parameters())
    bar = tqdm(total=train_cfg.steps, initial=start, disable=not progress or not procs.main,
               desc=f"train ({n_params / 1e6:.2f}M params)",
               unit="step", dynamic_ncols=True)
    log_rows: list[dict] = []
    t_wall = time.perf_counter()
    net.train()
    for step in range(start, train_cfg.steps):
        g = torch.Generator().manual_seed(derive_seed(train_cfg.seed, step, Stream.NOISE))
        t, z = dsm_draws(train_cfg, sde, g, (bs, *image_shape))
        rows = order.batch(step, bs)[local]
        x0 = data[rows.to(dev)]
        loss = step_loss(model, sde, x0, t[local].float().to(dev), z[local].to(dev),
                         None if y_all is None else y_all[rows].to(dev), step=step, checkpoints=ckpt_dir)
        lr = warm_up(opt, train_cfg, step)
        opt.zero_grad(set_to_none=True)
        if accelerator is not None:
            accelerator.backward(loss)  # gradients averaged over the processes: those of the global batch
        else:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), train_cfg.grad_clip)
        opt.step()
        ema.update_parameters(net)

        done = step + 1
        value = (accelerator.reduce(loss.detach(), "mean") if accelerator is not None else loss).item()
        if done % train_cfg.log_every == 0 or done == train_cfg.steps:
            log_rows.append(log_row(done, value, float(grad_norm), lr, t_wall))
            bar.set_postfix(loss=f"{value:.4f}")
        if procs.main and (done % train_cfg.checkpoint_every == 0 or done == train_cfg.steps):
            append_log(train_dir / "loss.csv", log_rows)
            log_rows = []
            save_checkpoint(ckpt_dir, step=done, model=net, ema=ema, opt=opt, keep=train_cfg.keep_checkpoints,
                            state={"loss": value})
        bar.update(1)
        if callback is not None:
            callback(done, value)
    bar.close()

    if procs.main:
        save_model(train_dir, ema, record, steps=train_cfg.steps)
    procs.barrier()
    return final


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log rows up to ``step`` (those of the checkpoint a resumed run starts from)."""
    if not path.exists():
        return
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= step]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def append_log(path: Path, rows: list[dict]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def load_weights(net: torch.nn.Module, train_dir: Path) -> None:
    """Load the finished model of ``train_dir`` (EMA weights) into ``net``, checking names and shapes."""
    path = Path(train_dir) / "model.safetensors"
    if not path.is_file():
        raise DiffauditError(f"{train_dir} holds no finished model to start from; train it first")
    weights = load_tensors(path)
    check_state_dict(net, weights, path)
    net.load_state_dict(weights)


def load_score_model(train_dir: str | Path, *, device: str | None = "auto") -> tuple[ScoreModel, dict]:
    """The trained score model s_theta (EMA weights) of ``train_dir`` in eval mode, with its ``model.json``."""
    train_dir = Path(train_dir)
    meta = read_json(train_dir / "model.json", expect=dict, fix="train again (or resume the training run)")
    if "model" not in meta:
        raise DiffauditError(f"{train_dir / 'model.json'} is incomplete; the training run did not finish, resume it")
    shape = meta.get("image_shape")
    if not (isinstance(shape, list) and len(shape) in (3, 4) and all(type(v) is int and v >= 1 for v in shape)):
        raise DiffauditError(f"{train_dir / 'model.json'}: image_shape {shape!r} is not [C, H, W] or [C, D, H, W]; the "
                             "file was edited or damaged: train again")
    cfg = from_dict(ModelConfig, meta["model"])
    weights = load_tensors(train_dir / "model.safetensors")
    with torch.device("meta"):  # names and shapes first: model.json cannot make this allocate more than the weights
        check_state_dict(build_network(cfg, shape), weights, train_dir / "model.safetensors")
    net = build_network(cfg, shape)
    net.load_state_dict(weights)
    model = ScoreModel(net, sde_from_dict(meta["sde"]), prediction=cfg.prediction).to(resolve_device(device)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, meta
