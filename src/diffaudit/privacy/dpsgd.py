"""DP-SGD training of the score model through Opacus (Abadi et al. 2016; Dockhorn et al. 2023 for diffusion).

* **Sampling.** Opacus' Poisson data loader: each step takes every training image independently with rate
  q = batch_size / N_D, the sampling the accountants assume. ``BatchMemoryManager`` splits a logical batch into
  physical ones of at most ``physical_batch_size`` images; only logical steps add noise and count as steps.
* **Clipping and noise.** Opacus' per-example gradients are clipped to ``max_grad_norm`` and Gaussian noise of
  std sigma * max_grad_norm is added to their sum, which is divided by the expected batch size.
* **Noise multiplicity** (Dockhorn et al.'s K noise draws per image). Repeating an image K times in the batch would
  make Opacus clip K "examples" that are one person, and the guarantee would no longer hold (Opacus issue #461).
  Here the K rows of an image are drawn together, Opacus computes one gradient per row, and the K row gradients of
  each image are averaged *before* clipping: the clipped per-example gradient is the gradient of that image's
  loss averaged over its K draws, so each image still contributes one clipped gradient, and q, sigma and the
  number of steps, hence epsilon, do not depend on K.
* **Models.** Opacus needs per-example gradients, so the model must have no BatchNorm (the U-Net uses GroupNorm);
  ``ModuleValidator`` checks it. ``finetune='attention'`` trains only the attention layers of a pretrained model.
* **Accounting.** sigma is calibrated to the target (epsilon, delta) by the chosen accountant for the run's q and
  step count; after training, epsilon at delta for the run actually performed (sigma, q, steps) is computed by the
  PRV, RDP and GDP accountants and stored in model.json.

A DP run is not resumable: the privacy engine's accountant and the noise generator's state are not checkpointed,
so a killed run starts again. The noise comes from a seeded torch generator, so a run is reproducible; Opacus'
``secure_mode`` (cryptographically secure noise, not reproducible) is not offered.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ..config import ACCOUNTANTS, DP_FINETUNE, DPConfig, ModelConfig, TrainConfig, to_dict
from ..device import resolve_device
from ..diffusion.conditioning import check_conditions
from ..diffusion.score import ScoreModel
from ..diffusion.sde import SDE
from ..diffusion.networks import resolve
from ..errors import DiffauditError
from ..extras import require
from ..images import to_model_space
from ..io import existing_artefact, write_json
from ..parallel import launched_world
from ..rng import derive_seed
from ..training.loop import (
    Stream,
    append_log,
    check_images,
    dsm_draws,
    init_model,
    log_row,
    save_model,
    step_loss,
    warm_up,
)


def check_dp_config(dp: DPConfig, n_train: int, batch_size: int) -> float:
    """Validate ``dp`` for a training set of ``n_train`` images; returns the Poisson rate q."""
    if (dp.epsilon is None) == (dp.noise_multiplier is None):
        raise DiffauditError("DP training needs exactly one of a target epsilon (--dp-epsilon) or a noise multiplier "
                             "(--dp-noise-multiplier)")
    if dp.epsilon is not None and not dp.epsilon > 0:
        raise DiffauditError(f"epsilon must be positive, got {dp.epsilon}")
    if not 0 < dp.delta < 1:
        raise DiffauditError(f"delta must be in (0, 1), got {dp.delta}")
    if dp.noise_multiplier is not None and not dp.noise_multiplier > 0:
        raise DiffauditError(f"the noise multiplier must be positive, got {dp.noise_multiplier}")
    if not dp.max_grad_norm > 0:
        raise DiffauditError(f"the clipping norm must be positive, got {dp.max_grad_norm}")
    if dp.noise_multiplicity < 1 or dp.physical_batch_size < 1:
        raise DiffauditError("noise multiplicity and physical batch size must be >= 1")
    if dp.accountant not in ACCOUNTANTS:
        raise DiffauditError(f"unknown accountant '{dp.accountant}'; choose one of {', '.join(ACCOUNTANTS)}")
    if dp.finetune not in DP_FINETUNE:
        raise DiffauditError(f"--dp-finetune must be all or attention, got '{dp.finetune}'")
    if not 1 <= batch_size <= n_train:
        raise DiffauditError(f"the expected batch size {batch_size} must be between 1 and N_D = {n_train} (q = batch / N_D); "
                             "lower --batch-size (audit: train.batch_size in --config) or raise --n-train")
    return poisson_rate(n_train, batch_size)


def poisson_rate(n: int, batch_size: int) -> float:
    """The rate Opacus' Poisson loader samples each record with for a batch size over n records: 1 / (batches per
    epoch), which is batch / n when batch divides n and a little less otherwise. The accountants take this rate."""
    return 1.0 / math.ceil(n / batch_size)


def epsilons(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> dict[str, float]:
    """epsilon at delta of ``steps`` Poisson-subsampled Gaussian steps, by each of Opacus' accountants."""
    require("opacus", "DP accounting")
    from opacus.accountants import create_accountant

    out = {}
    for name in ACCOUNTANTS:
        with warnings.catch_warnings():  # GDP's "experimental" notice: it is reported beside PRV and RDP, not alone
            warnings.filterwarnings("ignore", message="GDP accounting is experimental")
            acc = create_accountant(name)
            acc.history = [(noise_multiplier, sample_rate, int(steps))]
            out[name] = float(acc.get_epsilon(delta))
    return out


def average_draws(module: torch.nn.Module, b: int, k: int) -> None:
    """Turn Opacus' per-row gradients of b images x k adjacent draws into per-image gradients of the loss
    averaged over the image's draws (grad of the mean is the mean of the grads), before the optimizer clips them."""
    for p in module.parameters():
        if p.requires_grad and getattr(p, "grad_sample", None) is not None:
            if p.grad_sample.shape[0] != b * k:
                raise DiffauditError(f"expected {b * k} per-row gradients, got {p.grad_sample.shape[0]}")
            p.grad_sample = p.grad_sample.reshape(b, k, *p.grad_sample.shape[1:]).mean(1)


def _attention_only(net: torch.nn.Module) -> int:
    """Freeze everything but the attention layers; returns the number of trainable parameters."""
    trainable = 0
    for name, p in net.named_parameters():
        keep = ".attentions." in f".{name}" or "attn" in name
        p.requires_grad_(keep)
        trainable += p.numel() if keep else 0
    if trainable == 0:
        raise DiffauditError("--dp-finetune attention needs a model with attention layers (e.g. the paper preset)")
    return trainable


def _check_opacus_compatible(net: torch.nn.Module) -> None:
    require("opacus", "DP-SGD training")
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(net, strict=False)
    if errors:
        raise DiffauditError(f"the model cannot be trained with DP-SGD: {errors[0]} (use GroupNorm, not BatchNorm)")


def _loss_rows(out, records: int) -> tuple[torch.Tensor, int]:
    """``loss_of``'s answer as (mean loss, rows averaged over)."""
    return out if isinstance(out, tuple) else (out, records)


@dataclass
class DPRun:
    """What :func:`dp_sgd` did: the logical steps taken, the losses of its batches, and the ε its Opacus engine's own
    accountant gives at the run's δ with the noisy steps it counted (None for a non-private run)."""

    steps: int
    losses: list[float]
    epsilon_engine: float | None
    accountant_steps: int
    module: torch.nn.Module | None = None  # the module trained (Opacus' GradSampleModule for a private run)


def dp_sgd(net: torch.nn.Module, opt: torch.optim.Optimizer, *, n: int, batch_size: int, steps: int, sigma: float,
           dp: DPConfig, seed: int, device, loss_of: Callable[[torch.nn.Module, torch.Tensor, int, int], torch.Tensor],
           rows_per_example: int = 1, warm_up: Callable[[int], float] | None = None,
           after_step: Callable[[int, list[float], float], None] | None = None, progress: bool = True,
           desc: str = "DP-SGD", private: bool = True, public_rows: bool = False) -> DPRun:
    """The one DP-SGD loop of diffaudit (the score model's and the downstream classifier's): ``steps`` logical steps
    on Opacus' Poisson batches of n records at rate q = batch_size / n, per-example gradients clipped to
    ``dp.max_grad_norm``, Gaussian noise of std sigma x max_grad_norm added, split into physical batches of at most
    ``dp.physical_batch_size``.

    ``loss_of(module, idx, step, chunk)`` is the mean loss of the records ``idx`` (a physical batch; ``chunk`` counts
    the physical batches of the logical step) computed with ``module``, or (mean loss, rows) when it averaged over
    more rows than records. With ``public_rows`` it adds rows that cost no privacy (public or synthetic images, the
    same on neighbouring datasets) to the first physical batch of every logical step, the empty ones included, so
    that the sensitivity to one record stays the clipping norm. ``rows_per_example`` > 1 averages that many adjacent
    rows' gradients into one per record before clipping (the noise multiplicity; not with public rows). An empty
    Poisson batch still takes a noisy step.

    ``private=False`` is the same loop on the same Poisson batches without Opacus: the plain gradient of the summed
    loss over the expected batch size, which is what the private loop computes with no noise and no clipping (the
    non-private baseline of the utility regimes, and the check that the two agree)."""
    if public_rows and rows_per_example > 1:
        raise DiffauditError("public rows and a noise multiplicity above 1 do not mix: the rows of a record would no "
                             "longer be adjacent")
    from opacus import PrivacyEngine
    from opacus.data_loader import DPDataLoader
    from opacus.utils.batch_memory_manager import BatchMemoryManager

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.arange(n)), batch_size=batch_size,
        generator=torch.Generator().manual_seed(derive_seed(seed, Stream.DP_LOADER)))
    bar = tqdm(total=steps, disable=not progress, desc=desc, unit="step", dynamic_ncols=True)
    step, chunk, losses, lr = 0, 0, [], float("nan")
    if not private:
        poisson = DPDataLoader.from_data_loader(loader, generator=loader.generator)
        expected = int(n * poisson.sample_rate)  # what Opacus' optimizer divides by (make_private: the same rate)
        net.train()
        while step < steps:
            for (idx,) in poisson:
                lr = warm_up(step) if warm_up else lr
                opt.zero_grad(set_to_none=False)
                for p in net.parameters():
                    if p.requires_grad and p.grad is None:
                        p.grad = torch.zeros_like(p)
                # the physical batches of Opacus' BatchSplittingSampler (np.array_split), so chunks match
                parts = (torch.tensor_split(idx, math.ceil(len(idx) / dp.physical_batch_size)) if len(idx) else
                         [idx] if public_rows else [])
                for chunk, part in enumerate(parts):
                    loss, rows = _loss_rows(loss_of(net, part, step, chunk), len(part))
                    (loss * rows / expected).backward()  # the sum over rows, over the expected batch
                    losses.append(loss.item())
                opt.step()
                step += 1
                bar.update(1)
                if after_step:
                    after_step(step, losses, lr)
                if step >= steps:
                    break
        bar.close()
        return DPRun(step, losses, None, 0, net)
    with warnings.catch_warnings():  # seeded noise on purpose (reproducible runs); the module docstring says so
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=dp.accountant)
    module, opt, loader = engine.make_private(
        module=net, optimizer=opt, data_loader=loader, noise_multiplier=sigma, max_grad_norm=dp.max_grad_norm,
        poisson_sampling=True,
        noise_generator=torch.Generator(device=device).manual_seed(derive_seed(seed, Stream.DP_NOISE)))
    module.train()
    with BatchMemoryManager(data_loader=loader, max_physical_batch_size=dp.physical_batch_size, optimizer=opt) as batches, \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")  # Opacus' hook on the input layer
        while step < steps:
            for (idx,) in batches:
                lr = warm_up(step) if warm_up else lr
                b = len(idx)
                if b or (public_rows and chunk == 0):
                    loss, _ = _loss_rows(loss_of(module, idx, step, chunk), b)
                    loss.backward()
                    if rows_per_example > 1:
                        average_draws(module, b, rows_per_example)
                    losses.append(loss.item())
                else:  # an empty Poisson batch still takes a noisy step
                    for p in module.parameters():
                        if p.requires_grad:
                            p.grad_sample = torch.zeros(0, *p.shape, device=device)
                opt.step()
                opt.zero_grad(set_to_none=True)
                chunk += 1
                if opt._is_last_step_skipped:  # a physical batch of a logical step that goes on
                    continue
                step, chunk = step + 1, 0
                bar.update(1)
                if losses:
                    bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
                if after_step:
                    after_step(step, losses, lr)
                if step >= steps:
                    break
    bar.close()
    performed = sum(h[2] for h in engine.accountant.history)  # noisy steps the engine's accountant counted
    spent = float(engine.get_epsilon(dp.delta)) if sigma > 0 else math.inf  # no noise: no finite ε
    return DPRun(step, losses, spent, performed, module)


#: Settings of the training config that DP-SGD does not use, recorded as such in config.json and model.json.
NOT_APPLIED = {
    "train.grad_clip": "per-example clipping at dp.max_grad_norm bounds every gradient instead",
    "train.checkpoint_every": "a DP run is not resumable (the accountant and noise states are not checkpointed)",
    "train.keep_checkpoints": "a DP run keeps no checkpoints",
}


def train_dp(train_dir: str | Path, images: np.ndarray, *, model_cfg: ModelConfig, train_cfg: TrainConfig,
             dp: DPConfig, sde: SDE, data_id: str = "", device: str | None = "auto", progress: bool = True,
             labels: np.ndarray | None = None) -> Path:
    """Train a score model with DP-SGD on uint8 ``images``; ``train_cfg.steps`` logical steps of expected batch
    ``train_cfg.batch_size``. It shares the non-private trainer's initialisation, (t, z) draws, warm-up, loss,
    EMA, ``loss.csv`` and final save (:mod:`diffaudit.training.loop`); only the gradient differs: per-example,
    clipped, noised and accounted by Opacus. model.json gains a ``dp`` record; :data:`NOT_APPLIED` lists the
    training settings that do not apply. Returns the path of model.safetensors."""
    require("opacus", "DP-SGD training")
    from opacus.accountants.utils import get_noise_multiplier

    train_dir = Path(train_dir)
    if launched_world() > 1:
        raise DiffauditError("DP-SGD training runs in one process: its Poisson sampling, noise and accountant are "
                             "not split across data-parallel ranks; start it without accelerate launch/torchrun")
    n, *image_shape = check_images(images)
    q = check_dp_config(dp, n, train_cfg.batch_size)
    y_all = check_conditions(labels, n, model_cfg)
    model_cfg = resolve(model_cfg, image_shape)  # the shape the images' size resolves (recorded as built)
    record = json.loads(json.dumps({"model": to_dict(model_cfg), "train": to_dict(train_cfg), "sde": sde.to_dict(),
                                    "image_shape": list(image_shape), "data": data_id, "dp_config": to_dict(dp),
                                    "dp_not_applied": NOT_APPLIED}))
    final = train_dir / "model.safetensors"
    if existing_artefact(train_dir / "model.json", record, what="a DP model", fix="use another --run-dir") is not None:
        return final
    dev = resolve_device(device)
    sigma = dp.noise_multiplier or get_noise_multiplier(target_epsilon=dp.epsilon, target_delta=dp.delta, sample_rate=q,
                                                        steps=train_cfg.steps, accountant=dp.accountant)
    net = init_model(model_cfg, train_cfg, tuple(image_shape), dp.pretrained)
    _check_opacus_compatible(net)
    trainable = _attention_only(net) if dp.finetune == "attention" else sum(p.numel() for p in net.parameters())
    net = net.to(dev)
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(train_cfg.ema_decay))
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=train_cfg.lr,
                            weight_decay=train_cfg.weight_decay)
    data = torch.from_numpy(to_model_space(images))
    model_holder: list[ScoreModel] = []
    k = dp.noise_multiplicity
    train_dir.mkdir(parents=True, exist_ok=True)
    write_json(train_dir / "config.json", record)
    (train_dir / "loss.csv").unlink(missing_ok=True)  # a DP run always starts from step 0
    t_wall, log_rows = time.perf_counter(), []

    def loss_of(private: torch.nn.Module, idx: torch.Tensor, step: int, chunk: int) -> torch.Tensor:
        if not model_holder:
            model_holder.append(ScoreModel(private, sde, prediction=model_cfg.prediction))
        g = torch.Generator().manual_seed(derive_seed(train_cfg.seed, step, chunk, Stream.NOISE))
        x0 = data[idx].repeat_interleave(k, 0).to(dev)  # the K rows of an image are adjacent
        t, z = dsm_draws(train_cfg, sde, g, tuple(x0.shape))
        y = None if y_all is None else y_all[idx].repeat_interleave(k, 0).to(dev)
        return step_loss(model_holder[0], sde, x0, t.float().to(dev), z.to(dev), y, step=step)

    def after_step(step: int, losses: list[float], lr: float) -> None:
        ema.update_parameters(net)  # a logical step was taken: noise added, accountant stepped
        if losses and (step % train_cfg.log_every == 0 or step == train_cfg.steps):
            log_rows.append(log_row(step, float(np.mean(losses[-20:])), None, lr, t_wall))

    run = dp_sgd(net, opt, n=n, batch_size=train_cfg.batch_size, steps=train_cfg.steps, sigma=sigma, dp=dp,
                 seed=train_cfg.seed, device=dev, loss_of=loss_of, rows_per_example=k,
                 warm_up=lambda step: warm_up(opt, train_cfg, step), after_step=after_step, progress=progress,
                 desc=f"DP-SGD (sigma {sigma:.3g}, q {q:.3g})")
    step, losses = run.steps, run.losses
    append_log(train_dir / "loss.csv", log_rows)
    eps = epsilons(sigma, q, step, dp.delta)
    dp_record = {"noise_multiplier": sigma, "sample_rate": q, "steps": step, "delta": dp.delta, "epsilon": eps,
                 "epsilon_engine": run.epsilon_engine, "accountant": dp.accountant,
                 "accountant_steps": run.accountant_steps, "max_grad_norm": dp.max_grad_norm, "noise_multiplicity": k,
                 "physical_batch_size": dp.physical_batch_size, "finetune": dp.finetune, "trainable_params": trainable,
                 "pretrained": dp.pretrained, "seconds": round(time.perf_counter() - t_wall, 2),
                 "mean_loss_last_20": float(np.mean(losses[-20:])) if losses else None}
    save_model(train_dir, ema, record, steps=step, dp=dp_record)
    if not math.isfinite(eps[dp.accountant]):
        raise DiffauditError(f"epsilon is not finite ({eps}); raise the noise multiplier")
    return final
