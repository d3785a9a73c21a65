"""Conditioning a score model on a patient's attributes: at most one categorical attribute (a class, e.g. sex: the
networks' own class embedding) and any number of continuous ones (covariates, e.g. age: a small MLP), both added to
the time embedding, as diffusers and MONAI add their class embedding.

**The condition tensor.** A model with covariates takes ``class_labels`` as float [B, W]: column 0 is the class index
when the model has classes, the remaining ``covariates`` columns are the standardised continuous attributes
(:mod:`diffaudit.data.conditions` encodes them). A model with classes only keeps int64 [B] labels, so every
class-conditional model trained before covariates existed loads and samples as it did.

**The exact conditional memoriser.** :func:`conditioned_memoriser_score` is the score of the training set given the
condition: the mixture of the training images whose condition equals the sample's. Sampling it with a patient's own
attributes returns only the images of that attribute value (for a continuous attribute, the one image), which is what
an attacker who knows a patient's age and sex gains over sampling from the training set's attributes.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig
from ..errors import DiffauditError
from .score import memoriser_score
from .sde import SDE


def condition_width(cfg: ModelConfig) -> int:
    """Columns of the condition tensor of a model with covariates: the class (when it has classes) and each
    covariate; 0 for a model without covariates (its labels, if any, are int64 [B])."""
    if not cfg.covariates:
        return 0
    return int(cfg.num_classes > 0) + cfg.covariates


class AttributeEmbedding(nn.Module):
    """The embedding of a condition tensor [B, W] (module docstring): a class embedding of column 0 (when
    ``num_classes``) plus an MLP of the ``covariates`` last columns, each of width ``dim`` (the time embedding's)."""

    def __init__(self, num_classes: int, covariates: int, dim: int) -> None:
        super().__init__()
        self.num_classes, self.n_covariates = int(num_classes), int(covariates)
        self.classes = nn.Embedding(num_classes, dim) if num_classes else None
        self.covariates = nn.Sequential(nn.Linear(covariates, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, condition: torch.Tensor) -> torch.Tensor:
        if condition.ndim != 2 or condition.shape[1] != int(self.classes is not None) + self.n_covariates:
            raise DiffauditError(f"the model is conditioned on {self.num_classes} classes and {self.n_covariates} "
                                 f"covariates; a condition of shape {list(condition.shape)} does not fit")
        emb = self.covariates(condition[:, -self.n_covariates:].float())
        if self.classes is not None:
            emb = emb + self.classes(condition[:, 0].round().long())
        return emb


def attach(net: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Give a diffusers ``UNet2DModel`` or MONAI ``DiffusionModelUNet`` (``net``) the :class:`AttributeEmbedding` of
    ``cfg`` in place of its class embedding; both add ``class_embedding(class_labels)`` to the time embedding."""
    embed = net.time_embedding.linear_2 if hasattr(net, "time_embedding") else net.time_embed[-1]  # diffusers, MONAI
    dim = int(embed.out_features)
    net.class_embedding = AttributeEmbedding(cfg.num_classes, cfg.covariates, dim)
    if "num_class_embeds" in vars(net):  # MONAI embeds only when this plain attribute is set
        net.num_class_embeds = max(cfg.num_classes, 1)
    return net


def as_condition(values, device: torch.device | str = "cpu") -> torch.Tensor:
    """Conditions as the network takes them: class labels (one value per image) as int64 [B], condition rows
    [B, W] as float32."""
    a = np.asarray(values)
    if a.ndim <= 1:
        return torch.as_tensor(a.reshape(-1).astype(np.int64), device=device)
    return torch.as_tensor(a.astype(np.float32), device=device)


def check_conditions(conditions: np.ndarray | None, n: int, cfg: ModelConfig) -> torch.Tensor | None:
    """The training images' conditions for a model of ``cfg``: None (unconditional), int64 [n] class labels, or, with
    covariates, float32 [n, W] (module docstring). Refuses what does not fit, naming the shape it needs."""
    if not cfg.num_classes and not cfg.covariates:
        return None
    if conditions is None:
        raise DiffauditError("a conditional model needs the training images' classes or attributes")
    c = np.asarray(conditions)
    width = condition_width(cfg)
    if not width:
        y = c.reshape(-1)
        if len(y) != n or y.min() < 0 or y.max() >= cfg.num_classes:
            raise DiffauditError(f"need {n} class labels in [0, {cfg.num_classes}), got {len(y)} in "
                                 f"[{y.min()}, {y.max()}]")
        return torch.from_numpy(y.astype(np.int64))
    if c.shape != (n, width) or not np.isfinite(c).all():
        what = f"{'a class and ' if cfg.num_classes else ''}{cfg.covariates} covariate(s)"
        raise DiffauditError(f"need the {n} training images' attributes as {n} rows of {width} finite values "
                             f"({what}), got the shape {list(c.shape)}")
    if cfg.num_classes and (c[:, 0].min() < 0 or c[:, 0].max() >= cfg.num_classes):
        raise DiffauditError(f"the class column must lie in [0, {cfg.num_classes})")
    return torch.from_numpy(c.astype(np.float32))


def conditioned_memoriser_score(sde: SDE, images: torch.Tensor,
                                conditions: torch.Tensor) -> Callable[..., torch.Tensor]:
    """s(x, t, class_labels) of the training set given the condition: each sample of a batch follows the exact
    memoriser (:func:`~diffaudit.diffusion.score.memoriser_score`) of the training images whose condition row equals
    its own (int64 [K] labels or float [K, W] rows, as the model takes them). A condition no image has is refused."""
    keys = conditions.reshape(len(conditions), -1).double()

    def score(x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        if class_labels is None:
            raise DiffauditError("the conditional memoriser needs a condition for every sample")
        wanted = class_labels.reshape(len(x), -1).double().to(keys.device)
        out = torch.empty_like(x)
        for row in torch.unique(wanted, dim=0):
            members = (keys == row).all(dim=1)
            if not members.any():
                raise DiffauditError(f"no training image has the condition {row.tolist()}")
            mine = (wanted == row).all(dim=1).to(x.device)
            out[mine] = memoriser_score(sde, images[members.to(images.device)])(x[mine], t[mine])
        return out

    return score
