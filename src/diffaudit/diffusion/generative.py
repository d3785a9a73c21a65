"""What every stage needs of a diffusion model, whoever trained it: :class:`Generative`.

The count, t' (q_M), sampling into shards and the likelihood see a model only through this interface, so a continuous
score model (:class:`ContinuousModel`: an SDE and a score, diffaudit's own or an analytic one) and a discrete-time
network with its scheduler (:class:`~diffaudit.diffusion.discrete.DiscreteModel`: diffusers, MONAI, latent) go through
the same stages. ``steps`` always counts the steps of a run over the whole interval (0, T]; a partial run from t takes
the share of them that lies below t, so every run of one config has the same step size.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Protocol

import numpy as np
import torch

from ..errors import DiffauditError
from ..images import to_model_space, to_uint8
from .samplers import get_sampler, nfe_per_step, sample
from .score import with_labels
from .sde import SDE


class Generative(Protocol):
    """A diffusion model as the audit's stages use it."""

    T: float
    sde: SDE  # the continuous SDE of its likelihood (a discrete model's is the interpolated schedule)
    image_shape: tuple[int, int, int]  # (C, H, W) of the audit's images, which samples are returned in
    num_classes: int
    model_id: str
    continuous: bool

    def generate(self, *, indices: list[int] | range, seed: int, sampler: str, steps: int,
                 t_start: float | None = None, x_start: np.ndarray | None = None,
                 class_labels: torch.Tensor | None = None, device: torch.device | str = "cpu",
                 eps: float | None = None, precision: str = "fp32", **options: Any) -> np.ndarray:
        """uint8 images [B, C, H, W] of ``indices`` in run ``seed``: from the prior, or from ``x_start`` (uint8
        [C, H, W]) diffused to ``t_start`` (partial diffusion); the network in ``precision``
        (:mod:`diffaudit.diffusion.precision`)."""

    def check_sampler(self, sampler: str) -> None: ...

    def steps_at(self, t: float, sampler: str, steps: int) -> int: ...

    def nfe(self, sampler: str, steps: int, t: float | None = None, *, corrector_steps: int = 1) -> int: ...

    def sigma(self, t: float, sampler: str, steps: int) -> float: ...

    def score(self) -> Callable[..., torch.Tensor]:
        """s(x, t[, class_labels]) of :attr:`sde`, for the likelihood."""

    def record(self) -> dict: ...

    def describe(self) -> dict: ...


class ContinuousModel:
    """A score function s(x, t) of a continuous SDE (diffaudit's :class:`~diffaudit.diffusion.score.ScoreModel`, or an
    analytic score) as a :class:`Generative`: sampling is :func:`~diffaudit.diffusion.samplers.sample`, unchanged."""

    continuous = True

    def __init__(self, score_fn: Callable, sde: SDE, *, image_shape: tuple[int, int, int], num_classes: int = 0,
                 model_id: str = "", described: dict | None = None, covariates: int = 0) -> None:
        self.score_fn, self.sde, self.T = score_fn, sde, sde.T
        self.image_shape = tuple(int(v) for v in image_shape)
        self.num_classes, self.model_id = int(num_classes), model_id
        self.covariates = int(covariates)
        self.described = dict(described or {})

    def check_sampler(self, sampler: str) -> None:
        if sampler in ("ddpm", "ddim"):
            raise DiffauditError(f"sampler '{sampler}' steps a discrete scheduler, but this model is a continuous "
                                 f"{self.sde.name} SDE; choose em, pc or ode")
        get_sampler(sampler)

    def steps_at(self, t: float, sampler: str, steps: int) -> int:
        """Steps of a run from t: ceil(steps * t / T), so every run has the step size of a whole one."""
        return max(1, math.ceil(steps * t / self.T - 1e-9))

    def nfe(self, sampler: str, steps: int, t: float | None = None, *, corrector_steps: int = 1) -> int:
        n = steps if t is None else self.steps_at(t, sampler, steps)
        return n * nfe_per_step(sampler, corrector_steps=corrector_steps)

    def sigma(self, t: float, sampler: str | None = None, steps: int | None = None) -> float:
        return float(self.sde.coefficients(torch.tensor([t], dtype=torch.float64))[1][0]) if t > 0 else 0.0

    def score(self) -> Callable[..., torch.Tensor]:
        return self.score_fn

    @torch.no_grad()
    def generate(self, *, indices: list[int] | range, seed: int, sampler: str, steps: int,
                 t_start: float | None = None, x_start: np.ndarray | None = None,
                 class_labels: torch.Tensor | None = None, device: torch.device | str = "cpu",
                 eps: float | None = None, precision: str = "fp32", **options: Any) -> np.ndarray:
        kwargs: dict[str, Any] = {"eps": eps} if eps is not None else {}
        if x_start is not None:
            if t_start is None:
                raise DiffauditError("partial diffusion needs t_start, the time to diffuse x_start to")
            kwargs.update(t_start=t_start, x_start=torch.from_numpy(to_model_space(x_start)))
            steps = self.steps_at(t_start, sampler, steps)
        x = sample(with_labels(self.score_fn, class_labels), self.sde, shape=self.image_shape, indices=indices,
                   seed=seed, sampler=sampler, steps=steps, device=device, precision=precision, **kwargs, **options)
        return to_uint8(x)

    def record(self) -> dict:
        return {"sde": self.sde.to_dict()}

    def describe(self) -> dict:
        return {"kind": "continuous", "sde": self.sde.to_dict(), "num_classes": self.num_classes,
                **({"covariates": self.covariates} if self.covariates else {}), **self.described}


def is_conditional(model: Generative) -> bool:
    """Whether ``model`` is conditioned on a class or on attributes (:mod:`.conditioning`)."""
    return bool(model.num_classes or getattr(model, "covariates", 0))


def labels_for(model: Generative, label, n: int, device: torch.device | str) -> torch.Tensor | None:
    """One condition for a batch of ``n`` images of a conditional ``model``: a class label (int) or a condition row
    (a sequence of floats, for a model with covariates); None for an unconditional one."""
    if label is None:
        if is_conditional(model):
            raise DiffauditError("a conditional model needs the class or attributes to sample with")
        return None
    if np.ndim(label) == 0:
        return torch.full((n,), int(label), dtype=torch.long, device=device)
    return torch.as_tensor(np.asarray(label, dtype=np.float32), device=device).reshape(1, -1).repeat(n, 1)
