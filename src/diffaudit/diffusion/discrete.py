"""Discrete-time diffusion models: a network trained with a diffusers scheduler (DDPM, DDIM; MONAI's are converted),
sampled with the scheduler's own steps, and read as a continuous VP SDE for the likelihood.

**The model.** :class:`DiscreteModel` holds any callable ``net(x, timestep[, class_labels]) -> prediction`` (a
diffusers ``UNet2DModel``, a MONAI ``DiffusionModelUNet`` or the user's own network), a scheduler config and the
prediction type (``epsilon``, ``v_prediction`` or ``sample``), and optionally a latent codec (a VAE's encode and
decode) and a pixel transform (the resize and channels of an export, see :mod:`diffaudit.images`). Every stage sees
it through :class:`~diffaudit.diffusion.generative.Generative`: it turns (seed, indices) into uint8 images in the
audit's image space, whatever the network works in.

**Sampling** uses the scheduler's ``step`` — ``DDPMScheduler`` (ancestral, "ddpm") or ``DDIMScheduler`` ("ddim", with
its eta) built from the model's scheduler config — so clipping, thresholding, the variance type and the timestep
spacing are exactly the library's. Image i draws its initial noise and every step's noise from its own
(seed, i) stream (a list of generators, one per image, which diffusers' ``randn_tensor`` draws per image), so it does
not depend on its batch. With eta = 0 DDIM is deterministic and equals ``DDIMPipeline`` from the same initial noise.

**Time.** Training timestep k in {0, ..., N - 1} is the continuous time t = (k + 1) / N of the VP SDE the schedule
discretises (alpha-bar_k = alpha_t^2, so sigma_t = sqrt(1 - alpha-bar_k)); T = 1 is timestep N - 1.

**Partial diffusion, q_M(t) (Algorithm 1).** A grid time t maps to the start timestep k(t) = the largest of the
sampler's inference timesteps with (k + 1) / N <= t; x_p (encoded, for a latent model) is noised to k(t) with the
scheduler's forward kernel ``add_noise`` and the scheduler's reverse steps run from there over the inference
timesteps below it: a suffix of an ordinary sampling run, one network evaluation per step, the same step sizes, as
in the continuous case. Rounding down starts each run at most one inference step less noisy than t, which can only
raise q_M(t), so t' is never understated. With the DDPM default of N inference steps k(t) = tN - 1 exactly. The
sigma of the bound of Eq. 9 at t is sqrt(1 - alpha-bar_{k(t)}).

**Likelihood.** :class:`ScheduleVPSDE` is the VP SDE whose log alpha-bar interpolates the schedule's linearly between
the times (k + 1) / N (and 0 at t = 0): its perturbation kernel equals the scheduler's at every training timestep, and
for a linear beta schedule it is Song et al.'s VP SDE up to the discretisation (beta(t) piecewise constant). The
network becomes a score, s(x, t) = -eps(x, tN - 1) / sigma_t (v and sample predictions converted to eps with the
alpha-bar of t; :func:`to_epsilon` is the one place that does it), so the probability-flow ODE gives the exact
likelihood of that continuous model, integrated from t = 1/N, the first training timestep (the network never saw
less noise). For other schedules (scaled_linear, squaredcos_cap_v2) it is the same construction; the ODE is then the
one of the interpolated schedule, not of a published continuous SDE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..config import PREDICTION_TYPES
from ..errors import DiffauditError
from ..images import to_model_space, to_uint8
from .precision import in_precision, numerics
from .rng import ImageNoise
from .sde import SDE, _expand

SCHEDULER_SAMPLERS = ("ddpm", "ddim")  # diffusers' DDPMScheduler (ancestral) and DDIMScheduler
MAX_TRAIN_TIMESTEPS = 100_000  # far beyond any published schedule; a larger number only exhausts memory


def scheduler_class(sampler: str):
    """diffusers' scheduler class for a scheduler sampler name."""
    from diffusers import DDIMScheduler, DDPMScheduler

    try:
        return {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}[sampler]
    except KeyError:
        raise DiffauditError(f"sampler '{sampler}' is not a scheduler's; a discrete-time model samples with "
                             f"{' or '.join(SCHEDULER_SAMPLERS)}") from None


def sampler_of_class(class_name: str) -> str:
    """The scheduler sampler that a saved scheduler class stands for."""
    names = {"DDPMScheduler": "ddpm", "DDIMScheduler": "ddim"}
    if class_name not in names:
        raise DiffauditError(f"scheduler class '{class_name}' is not supported; diffaudit samples with the "
                             "DDPMScheduler or DDIMScheduler of the same config (pass --scheduler ddpm or ddim)")
    return names[class_name]


def check_schedule_config(config: dict, source: str = "the scheduler config") -> None:
    """Refuse a scheduler config whose schedule cannot be a diffusion model's, naming the field of ``source`` (the file
    it came from): ``num_train_timesteps`` not a whole number in [1, MAX_TRAIN_TIMESTEPS], or ``trained_betas`` not
    one number in (0, 1) per training timestep. Checked before diffusers builds it (a huge schedule would only
    exhaust memory); :func:`check_schedule` checks the betas diffusers then computes."""
    n = config.get("num_train_timesteps", 1000)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_TRAIN_TIMESTEPS:
        raise DiffauditError(f"{source}: num_train_timesteps is {n!r}; it must be the number of training timesteps, a "
                             f"whole number from 1 to {MAX_TRAIN_TIMESTEPS} (diffusers' default 1000): give the scheduler "
                             "config the model was trained with")
    betas = config.get("trained_betas")
    schedule = config.get("beta_schedule", "linear")
    if betas is None and schedule in ("linear", "scaled_linear"):  # every beta lies between beta_start and beta_end
        ends = [config.get("beta_start", 0.0001), config.get("beta_end", 0.02)]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1 for v in ends):
            raise DiffauditError(f"{source}: the {schedule} betas from beta_start {ends[0]!r} to beta_end {ends[1]!r} "
                                 "fall outside (0, 1); choose beta_start and beta_end strictly between 0 and 1 "
                                 "(diffusers' default: 0.0001 to 0.02)")
    if betas is None:
        return
    try:
        values = np.asarray(betas, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DiffauditError(f"{source}: trained_betas must be a list of numbers, one per training timesteps; give "
                             "the scheduler config the model was trained with") from None
    if len(values) != n:
        raise DiffauditError(f"{source}: trained_betas holds {len(values)} betas but num_train_timesteps is {n}; they "
                             "must agree (one beta per training timestep)")
    bad = np.flatnonzero(~((values > 0) & (values < 1)))
    if len(bad):
        raise DiffauditError(f"{source}: trained_betas holds {len(bad)} value(s) outside (0, 1) (beta_{bad[0]} = "
                             f"{float(values[bad[0]]):.4g}); every beta must lie strictly between 0 and 1")


def check_schedule(scheduler: Any, source: str = "the scheduler config") -> None:
    """Refuse a built diffusers scheduler whose betas fall outside (0, 1) or whose alpha-bar reaches 0 (a linear or
    scaled_linear schedule with a beta_start or beta_end out of range, say), naming the config fields of ``source``."""
    cfg = scheduler.config
    betas = torch.as_tensor(scheduler.betas, dtype=torch.float64)
    ok = (betas > 0) & (betas < 1)
    if getattr(cfg, "rescale_betas_zero_snr", False) and len(betas):
        ok[-1] = betas[-1] > 0  # a zero-terminal-SNR schedule ends with beta = 1 (diffusers keeps alpha-bar above 0)
    if not bool(ok.all()):
        k = int((~ok).nonzero()[0, 0])
        how = ("trained_betas" if getattr(cfg, "trained_betas", None) is not None else
               f"the {getattr(cfg, 'beta_schedule', '?')} betas from beta_start {getattr(cfg, 'beta_start', '?')!r} to "
               f"beta_end {getattr(cfg, 'beta_end', '?')!r}")
        raise DiffauditError(f"{source}: {how} give beta_{k} = {float(betas[k]):.4g}, outside (0, 1); every beta must "
                             "lie strictly between 0 and 1 (diffusers' default: linear, 0.0001 to 0.02)")
    abar = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64)
    if len(abar) != int(cfg.num_train_timesteps):
        raise DiffauditError(f"{source}: the schedule has {len(abar)} betas but num_train_timesteps is "
                             f"{cfg.num_train_timesteps}; they must agree")
    if not bool((abar > 0).all()):
        k = int((abar <= 0).nonzero()[0, 0])
        raise DiffauditError(f"{source}: alpha-bar of the schedule reaches 0 at timestep {k} of "
                             f"{cfg.num_train_timesteps} (the betas are too large for so many timesteps); give the "
                             "schedule the model was trained with")


def to_epsilon(prediction: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor, kind: str) -> torch.Tensor:
    """The noise eps of x = sqrt(abar) x_0 + sqrt(1 - abar) eps predicted by a network of prediction type ``kind``
    (``alpha_bar`` [B]): epsilon as it is; v = sqrt(abar) eps - sqrt(1 - abar) x_0 gives
    eps = sqrt(abar) v + sqrt(1 - abar) x; a sample prediction x_0 gives eps = (x - sqrt(abar) x_0) / sqrt(1 - abar)."""
    a = _expand(alpha_bar.to(x.dtype), x)
    if kind == "epsilon":
        return prediction
    if kind == "v_prediction":
        return a.sqrt() * prediction + (1 - a).sqrt() * x
    if kind == "sample":
        return (x - a.sqrt() * prediction) / (1 - a).sqrt()
    raise DiffauditError(f"unknown prediction type '{kind}'; choose one of {', '.join(PREDICTION_TYPES)}")


def from_epsilon(eps: torch.Tensor, x: torch.Tensor, alpha_bar: torch.Tensor, kind: str) -> torch.Tensor:
    """The inverse of :func:`to_epsilon`: what a network of type ``kind`` outputs when its noise estimate is ``eps``
    (used to write exact models of each type)."""
    a = _expand(alpha_bar.to(x.dtype), x)
    x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
    if kind == "epsilon":
        return eps
    if kind == "v_prediction":
        return a.sqrt() * eps - (1 - a).sqrt() * x0
    if kind == "sample":
        return x0
    raise DiffauditError(f"unknown prediction type '{kind}'; choose one of {', '.join(PREDICTION_TYPES)}")


@dataclass(frozen=True)
class Codec:
    """A latent model's autoencoder: ``encode`` maps model-space pixels [B, C, H, W] to scaled latents and ``decode``
    back (diffusers ``AutoencoderKL``: the posterior's mode, times the scaling factor; ``VQModel``: its latents)."""

    encode: Callable[[torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]
    latent_shape: tuple[int, ...]
    kind: str = "latent"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


def _output(out: Any) -> torch.Tensor:
    out = getattr(out, "sample", out)  # diffusers returns UNet2DOutput(sample=...)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


class ScheduleVPSDE(SDE):
    """The VP SDE of a discrete schedule (module docstring): log alpha-bar interpolated linearly in t between the
    training timesteps, beta(t) = -d log alpha-bar / dt piecewise constant."""

    name = "schedule-vp"

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.n = len(abar)
        self.T = 1.0
        self.knots = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log(abar)])  # log abar at t = k / N
        self.slopes = torch.diff(self.knots) * self.n  # d log abar / dt on each interval

    def log_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        s = (t.to(torch.float64) * self.n).clamp(0, self.n)
        k = s.floor().clamp(max=self.n - 1).long()
        knots, slopes = self.knots.to(t.device), self.slopes.to(t.device)
        return (knots[k] + (s - k) * slopes[k] / self.n).to(t.dtype)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        k = (t.to(torch.float64) * self.n).floor().clamp(0, self.n - 1).long()
        return (-self.slopes.to(t.device)[k]).to(t.dtype)

    def sde(self, x, t):
        beta_t = self.beta(t)
        return -0.5 * _expand(beta_t, x) * x, torch.sqrt(beta_t)

    def coefficients(self, t):
        la = self.log_alpha_bar(t)
        return torch.exp(0.5 * la), torch.sqrt(-torch.expm1(la))

    @property
    def prior_std(self) -> float:
        return 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "num_train_timesteps": self.n}


class DiscreteModel:
    """A network trained with a discrete scheduler, with the audit's view of it (module docstring).

    Args:
        net: ``net(x, timestep)`` or, class-conditional, ``net(x, timestep, class_labels=y)``; returns the prediction
            (a tensor or an object with ``.sample``).
        scheduler_config: a diffusers scheduler config (``scheduler.config``, or the dict of ``scheduler_config.json``).
        prediction_type: the network's output; default the config's.
        default_sampler: 'ddpm' or 'ddim' (the saved scheduler's class); ``default_steps`` the pipeline's default.
        image_shape: (C, H, W) of the audit's images (the manifest's), which samples are returned in.
        pixel_shape: (C, H, W) the network's pixels live in (an export may repeat grey to RGB and upsample).
        to_pixels / from_pixels: uint8 audit-space image [C, H, W] -> uint8 model pixels, and model-space pixels
            [B, C', H', W'] -> audit-space float [B, C, H, W] in [-1, 1] (default: identity; see :mod:`images`).
        codec: a latent model's autoencoder.
        num_classes: > 0 for a class-conditional network.
    """

    continuous = False

    def __init__(self, net: Callable, scheduler_config: dict | Any, *, prediction_type: str | None = None,
                 default_sampler: str = "ddpm", default_steps: int | None = None,
                 image_shape: tuple[int, int, int], pixel_shape: tuple[int, int, int] | None = None,
                 to_pixels: Callable[[np.ndarray], np.ndarray] | None = None,
                 from_pixels: Callable[[torch.Tensor], torch.Tensor] | None = None, codec: Codec | None = None,
                 num_classes: int = 0, eta: float = 0.0, model_id: str = "", described: dict | None = None,
                 source: str = "the scheduler config") -> None:
        config = dict(scheduler_config)
        self.source = source  # where the scheduler config came from, named when it is refused
        prediction_type = prediction_type or config.get("prediction_type", "epsilon")
        if not isinstance(prediction_type, str) or prediction_type not in PREDICTION_TYPES:
            raise DiffauditError(f"{source}: unknown prediction type {prediction_type!r}; choose one of "
                                 f"{', '.join(PREDICTION_TYPES)} (--prediction-type)")
        config["prediction_type"] = prediction_type
        check_schedule_config(config, source)
        self.config = {k: v for k, v in config.items() if not k.startswith("_")}
        self.net, self.prediction_type, self.codec = net, prediction_type, codec
        self.default_sampler = default_sampler
        scheduler_class(default_sampler)
        probe = self._scheduler(default_sampler)
        check_schedule(probe, source)
        self.alphas_cumprod = probe.alphas_cumprod.to(torch.float64)
        self.n_train = int(probe.config.num_train_timesteps)
        self._probe_step(default_sampler)
        self.default_steps = int(default_steps or self.n_train)
        self.image_shape = tuple(int(v) for v in image_shape)
        self.pixel_shape = tuple(int(v) for v in (pixel_shape or image_shape))
        self.model_shape = codec.latent_shape if codec is not None else self.pixel_shape
        self.to_pixels, self.from_pixels = to_pixels, from_pixels
        self.num_classes, self.eta = int(num_classes), float(eta)
        self.model_id, self.described = model_id, dict(described or {})
        self.T = 1.0
        self.sde = ScheduleVPSDE(self.alphas_cumprod)
        self._schedulers: dict[tuple[str, int], Any] = {}

    # ---- the scheduler -------------------------------------------------------------------------------------
    def _scheduler(self, sampler: str, steps: int | None = None):
        cls = scheduler_class(sampler)
        try:
            s = cls.from_config(self.config)
        except Exception as err:  # diffusers raises NotImplementedError/ValueError for unknown schedules
            raise DiffauditError(f"{self.source} cannot build a {cls.__name__}: {_one_line(err)}; fix that field of the "
                                 "scheduler config") from None
        if steps is not None:
            if not 1 <= steps <= s.config.num_train_timesteps:
                raise DiffauditError(f"{steps} inference steps for a model of {s.config.num_train_timesteps} training "
                                     "timesteps; use 1 to that many")
            try:
                s.set_timesteps(steps)
            except Exception as err:  # an unknown timestep_spacing, say
                raise DiffauditError(f"{self.source}: its {cls.__name__} cannot set {steps} inference steps "
                                     f"({_one_line(err)}); fix the scheduler config") from None
            ts = [int(k) for k in s.timesteps]
            n = int(s.config.num_train_timesteps)
            if not all(0 <= k < n for k in ts):  # a negative steps_offset, say: indices would wrap around the schedule
                bad = next(k for k in ts if not 0 <= k < n)
                raise DiffauditError(f"{self.source}: {steps} inference steps of its {cls.__name__} include timestep "
                                     f"{bad}, outside the {n} training timesteps 0 to {n - 1} (steps_offset "
                                     f"{s.config.get('steps_offset')!r}, timestep_spacing "
                                     f"{s.config.get('timestep_spacing')!r}); fix the scheduler config")
        return s

    def _probe_step(self, sampler: str) -> None:
        """One scheduler step on a tiny zero tensor, so that a config diffusers accepts but cannot step (an unknown
        variance type, say) is refused when the model is loaded rather than after the work started."""
        s = self._scheduler(sampler, min(2, self.n_train))
        x = torch.zeros(1, 1, 2, 2)
        learned = self.config.get("variance_type") in ("learned", "learned_range")  # the network outputs 2C channels
        out = torch.zeros(1, 2 if learned else 1, 2, 2)
        try:
            s.step(out, int(s.timesteps[0]), x, generator=torch.Generator().manual_seed(0))
        except Exception as err:
            raise DiffauditError(f"{self.source}: its {type(s).__name__} cannot take a step ({_one_line(err)}); fix the "
                                 "scheduler config") from None

    def scheduler(self, sampler: str, steps: int):
        key = (sampler, int(steps))
        if key not in self._schedulers:
            self._schedulers[key] = self._scheduler(sampler, steps)
        return self._schedulers[key]

    def check_sampler(self, sampler: str) -> None:
        scheduler_class(sampler)

    def timesteps(self, sampler: str, steps: int, t_start: float | None = None) -> list[int]:
        """The inference timesteps a run from ``t_start`` (None: from pure noise) goes through (module docstring)."""
        all_steps = [int(k) for k in self.scheduler(sampler, steps).timesteps]
        if t_start is None:
            return all_steps
        run = [k for k in all_steps if (k + 1) / self.n_train <= t_start + 1e-9]
        if not run:
            first = min(all_steps)
            raise DiffauditError(f"t = {t_start:g} lies below the first inference timestep ({first}, t = "
                                 f"{(first + 1) / self.n_train:g}) of {steps} {sampler} steps; use a coarser t grid "
                                 "or more steps")
        return run

    def start_time(self, t: float, sampler: str, steps: int) -> float:
        """The continuous time (k(t) + 1) / N a run for grid time t starts at."""
        return (self.timesteps(sampler, steps, t)[0] + 1) / self.n_train

    def steps_at(self, t: float, sampler: str, steps: int) -> int:
        return len(self.timesteps(sampler, steps, t))

    def nfe(self, sampler: str, steps: int, t: float | None = None, *, corrector_steps: int = 1) -> int:
        """Network evaluations of one image's run: one per step."""
        return len(self.timesteps(sampler, steps, t))

    def sigma(self, t: float, sampler: str, steps: int) -> float:
        """sigma of the bound of Eq. 9 at grid time t: sqrt(1 - alpha-bar at the run's start timestep)."""
        if t <= 0:
            return 0.0
        k = self.timesteps(sampler, steps, t)[0]
        return float(torch.sqrt(1 - self.alphas_cumprod[k]))

    # ---- the network as the samplers and the likelihood need it -------------------------------------------
    def predict(self, x: torch.Tensor, timestep: torch.Tensor | int, class_labels: torch.Tensor | None) -> torch.Tensor:
        if class_labels is None:
            return _output(self.net(x, timestep))
        return _output(self.net(x, timestep, class_labels=class_labels))

    def score(self) -> Callable[..., torch.Tensor]:
        """s(x, t[, class_labels]) = -eps(x, tN - 1) / sigma_t of :class:`ScheduleVPSDE` (module docstring), for the
        likelihood."""

        def score_fn(x: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
            alpha, sigma = self.sde.coefficients(t)
            timestep = (t * self.n_train - 1).clamp_min(0).to(torch.float32)
            pred = self.predict(x, timestep, class_labels)
            eps = to_epsilon(pred, x, alpha**2, self.prediction_type)
            return -eps / _expand(sigma, x)

        return score_fn

    def encode_pixels(self, images: np.ndarray, device: torch.device | str) -> torch.Tensor:
        """uint8 audit-space images [B, C, H, W] -> the model's space (pixels in [-1, 1], or scaled latents)."""
        if self.to_pixels is not None:
            images = np.stack([self.to_pixels(im) for im in images])
        x = torch.from_numpy(to_model_space(images)).to(device)
        return self.codec.encode(x) if self.codec is not None else x

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """The model's space -> audit-space pixels in [-1, 1] (float)."""
        if self.codec is not None:
            x = self.codec.decode(x)
        return self.from_pixels(x) if self.from_pixels is not None else x

    # ---- sampling ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, *, indices: list[int] | range, seed: int, sampler: str, steps: int, t_start: float | None = None,
            x_start: np.ndarray | None = None, class_labels: torch.Tensor | None = None,
            device: torch.device | str = "cpu", precision: str = "fp32") -> torch.Tensor:
        """Images ``indices`` of run ``seed`` in the model's own space (before decoding): from pure noise, or from
        ``x_start`` (uint8 audit-space [C, H, W]) noised to the start timestep of ``t_start``; the network in
        ``precision`` (:mod:`diffaudit.diffusion.precision`)."""
        indices = list(indices)
        if not indices:
            raise DiffauditError("nothing to sample: the list of image indices is empty")
        sched = self.scheduler(sampler, steps)
        noise = ImageNoise(seed=seed, indices=indices, shape=self.model_shape, device=device)
        if x_start is None:
            if t_start is not None and t_start < self.T:
                raise DiffauditError(f"starting below T (t_start={t_start}) needs x_start, the image to diffuse from")
            run = self.timesteps(sampler, steps)
            x = noise() * sched.init_noise_sigma
        else:
            run = self.timesteps(sampler, steps, self.T if t_start is None else t_start)
            x0 = self.encode_pixels(x_start[None], device).expand(len(indices), *self.model_shape)
            x = sched.add_noise(x0, noise(), torch.full((len(indices),), run[0], dtype=torch.long, device=device))
        generators = noise.generators  # one per image: diffusers draws each image's step noise from its own
        options = {"eta": self.eta} if sampler == "ddim" else {}
        predict = in_precision(self.predict, precision)
        with numerics(precision):
            for k in run:
                pred = predict(sched.scale_model_input(x, k), torch.tensor(k, device=device), class_labels)
                x = sched.step(pred, k, x, generator=generators, **options).prev_sample
        return x

    @torch.no_grad()
    def generate(self, *, indices: list[int] | range, seed: int, sampler: str, steps: int,
                 t_start: float | None = None, x_start: np.ndarray | None = None,
                 class_labels: torch.Tensor | None = None, device: torch.device | str = "cpu",
                 eps: float | None = None, precision: str = "fp32", **options: Any) -> np.ndarray:
        """uint8 audit-space images [B, C, H, W] (see :meth:`run`); the network in ``precision``."""
        x = self.run(indices=indices, seed=seed, sampler=sampler, steps=steps, t_start=t_start, x_start=x_start,
                     class_labels=class_labels, device=device, precision=precision)
        return to_uint8(self.decode(x))

    def record(self) -> dict:
        """What a set of samples depends on besides the sampling config (written to its config.json)."""
        return {"scheduler": {**self.config, "_prediction": self.prediction_type}, "model_kind": "discrete",
                "latent": self.codec is not None}

    def describe(self) -> dict:
        return {"kind": "discrete", "prediction_type": self.prediction_type, "num_train_timesteps": self.n_train,
                "beta_schedule": self.config.get("beta_schedule"), "default_sampler": self.default_sampler,
                "default_steps": self.default_steps, "latent": self.codec is not None,
                "pixel_shape": list(self.pixel_shape), "num_classes": self.num_classes, **self.described}


def gaussian_epsilon(alphas_cumprod: torch.Tensor, mean: float, std: float) -> Callable:
    """The exact eps-prediction network of data N(mean, std^2 I) under a discrete schedule, at any (also fractional)
    timestep (alpha-bar interpolated as in :class:`ScheduleVPSDE`): eps = sigma (x - sqrt(abar) m) / (abar s^2 + sigma^2)."""
    sde = ScheduleVPSDE(alphas_cumprod)
    n = len(alphas_cumprod)

    def net(x: torch.Tensor, timestep) -> torch.Tensor:
        t = (torch.as_tensor(timestep, dtype=torch.float64, device=x.device).reshape(-1) + 1) / n
        a, s = sde.coefficients(t.expand(len(x)))
        a, s = _expand(a, x).to(x.dtype), _expand(s, x).to(x.dtype)
        return s * (x - a * mean) / (a**2 * std**2 + s**2)

    return net


def memoriser_epsilon(alphas_cumprod: torch.Tensor, images: torch.Tensor, kind: str = "epsilon") -> Callable:
    """The exact network of type ``kind`` for the empirical distribution of ``images`` [K, C, H, W] under a discrete
    schedule (a model that has memorised its training set perfectly): eps = (x - sqrt(abar) E[x_0 | x]) / sqrt(1 - abar)
    with E[x_0 | x] = sum_k softmax_k(-|x - sqrt(abar) x_k|^2 / 2(1 - abar)) x_k."""
    abar_all = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    flat = images.flatten(1).to(torch.float64)

    def net(x: torch.Tensor, timestep) -> torch.Tensor:
        k = torch.as_tensor(timestep, device="cpu").reshape(-1).long().expand(len(x))
        abar = abar_all[k].to(x.device)
        xf = x.flatten(1).to(torch.float64)
        centres = abar.sqrt()[:, None, None] * flat.to(x.device)[None]
        d2 = (xf[:, None, :] - centres).pow(2).sum(-1)
        w = torch.softmax(-d2 / (2 * (1 - abar)[:, None]), dim=1)
        x0 = w @ flat.to(x.device)
        eps = ((xf - abar.sqrt()[:, None] * x0) / (1 - abar).sqrt()[:, None]).reshape_as(x)
        return from_epsilon(eps, xf.reshape_as(x), abar, kind).to(x.dtype)

    return net

