"""The model an audit is about, loaded from where it was saved, checked against the run's data, with its digest.

``load_model(PATH, ...)`` accepts (the first that matches):

* **diffaudit's own model**: a ``train/`` folder (``model.json`` + ``model.safetensors``) or a run directory holding
  one; a continuous score model of its SDE.
* **a diffusers pipeline folder** saved with ``save_pretrained``: ``model_index.json``, ``unet/`` (``UNet2DModel``)
  and ``scheduler/`` (``DDPMScheduler`` or ``DDIMScheduler``); with ``vae/`` (``AutoencoderKL``) or ``vqvae/``
  (``VQModel``) it is a latent model (``LDMPipeline``'s layout), sampled in latent space and decoded.
* **a bare UNet2DModel folder** (``config.json`` + weights) with ``scheduler``: a scheduler folder, a
  ``scheduler_config.json``, or ``ddpm``/``ddim`` for that scheduler's defaults (linear betas, 1000 steps).
* **a MONAI model** (``monai>=1.4``, ``pip install 'diffaudit[monai]'``): a folder with ``monai.json``::

      {"format": "diffaudit-monai/1",
       "network": {"class": "DiffusionModelUNet", "args": {"spatial_dims": 2, "in_channels": 1, ...}},
       "scheduler": {"class": "DDPMScheduler", "args": {"num_train_timesteps": 1000, "schedule": "linear_beta"}},
       "weights": "model.safetensors"}

  ``network.args`` and ``scheduler.args`` are the keyword arguments of MONAI's classes. MONAI's scheduler is sampled
  through the diffusers scheduler of the same betas, clipping, variance and timestep spacing (linspace), whose steps
  are the same formulas — diffaudit needs the diffusers step because it draws each image's noise from the image's own
  stream, where MONAI draws one tensor for the batch. DDIM matches MONAI's exactly (a test); MONAI's DDPM step always
  goes from t to t - 1, so the two agree at MONAI's default of N inference steps, and with fewer steps diffaudit takes
  the proper DDPM step between the inference timesteps.

Weights load from safetensors; a ``.bin``/``.pt``/``.pth`` file only with ``torch.load(weights_only=True)``, which
refuses anything that would run code. A model whose channels, image size or classes cannot be the run's is refused
before any work. The model's digest is the SHA-256 of its weight files and of its scheduler config and prediction
type: every results.json section records it (provenance), and a run directory audits one model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..data.export import EXPORT_RECORD, check_training_record
from ..device import resolve_device
from ..diffusion.discrete import (
    PREDICTION_TYPES,
    Codec,
    DiscreteModel,
    sampler_of_class,
    scheduler_class,
)
from ..diffusion.generative import ContinuousModel, Generative
from ..errors import DiffauditError
from ..extras import require
from ..images import from_model_pixels, resize_uint8
from ..io import read_json, run_relative, write_json
from ..training.loop import load_score_model

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin",
                "pytorch_model.bin", "model.bin", "model.pt", "model.pth")
UNSAFE_SUFFIXES = (".bin", ".pt", ".pth")
MONAI_FORMAT = "diffaudit-monai/1"
EXTERNAL = "external.json"  # <run>/train/external.json: the model a run audits when it did not train it


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a torch file read with ``weights_only=True`` (no code is run)."""
    from safetensors.torch import load_file

    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as err:
            raise DiffauditError(f"{path} is not a readable safetensors file ({err})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle.UnpicklingError for code, others for a damaged file
        raise DiffauditError(f"{path} cannot be read without running code from it ({type(err).__name__}); re-save the "
                             "weights as safetensors (safetensors.torch.save_file(model.state_dict(), ...))") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DiffauditError(f"{path} holds no state dict of tensors; save model.state_dict()")
    return state


def weight_file(folder: Path) -> Path:
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise DiffauditError(f"{folder} holds no weights ({', '.join(WEIGHT_NAMES[:2])} or a .bin/.pt state dict)")


def _load_into(module: torch.nn.Module, path: Path) -> None:
    state = load_weights(path)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise DiffauditError(f"{path} does not fit its config (missing {missing[:3]}, unexpected {unexpected[:3]}, "
                             f"wrong shapes {wrong[:3]}); the weights and config.json come from different models")
    for name, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise DiffauditError(f"{path} has NaN/Inf values in '{name}'; the model diverged")
    module.load_state_dict(state)


def _diffusers_module(folder: Path, expected: tuple[str, ...]):
    """A diffusers model (UNet2DModel, AutoencoderKL, VQModel) from its config and weights, no code from the files."""
    import diffusers

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise DiffauditError(f"{folder} has no config.json; save the model with save_pretrained")
    config = read_json(config_path)
    name = config.get("_class_name")
    if name not in expected:
        raise DiffauditError(f"{config_path} describes a {name!r}; expected {' or '.join(expected)}")
    cls = getattr(diffusers, name)
    try:
        module = cls.from_config(config)
    except Exception as err:
        raise DiffauditError(f"{config_path} does not build a {name}: {err}") from None
    path = weight_file(folder)
    _load_into(module, path)
    return module.eval().requires_grad_(False), [path]


def _scheduler_config(spec: str | Path | dict | None, folder: Path | None) -> tuple[dict, str]:
    """(scheduler config, default sampler) from a folder, a JSON file, a name (ddpm/ddim) or a dict."""
    if isinstance(spec, dict):
        config = dict(spec)
    elif spec in ("ddpm", "ddim"):
        cls = scheduler_class(str(spec))
        return dict(cls().config), str(spec)
    else:
        path = Path(spec) if spec is not None else folder
        if path is None:
            raise DiffauditError("a bare UNet folder needs its scheduler: --scheduler FOLDER, a scheduler_config.json, "
                                 "or ddpm/ddim for that scheduler's defaults")
        if path.is_dir():
            path = path / "scheduler_config.json"
        if not path.is_file():
            raise DiffauditError(f"no scheduler config at {path}; give the scheduler/ folder saved with the model")
        config = read_json(path)
    if not isinstance(config, dict) or "_class_name" not in config:
        raise DiffauditError("the scheduler config has no _class_name; save it with scheduler.save_pretrained")
    return config, sampler_of_class(config["_class_name"])


def digest(files: list[Path], *extra: Any) -> str:
    """SHA-256 of the files' bytes and of ``extra`` (JSON), 16 hex digits."""
    h = hashlib.sha256()
    for path in files:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


# ---- the pixel space of a model trained on an export ----------------------------------------------------------
def pixel_transform(image_shape: tuple[int, int, int], pixel_shape: tuple[int, int, int]):
    """(to_pixels, from_pixels) between the run's images and a model trained on an export of them (grey repeated to
    RGB, upsampled), refusing a shape that cannot be one."""
    c, h, w = image_shape
    pc, ph, pw = pixel_shape
    if pc not in (c, 3 if c == 1 else c):
        raise DiffauditError(f"the model works on {pc}-channel images but the run's are {c}-channel; export with "
                             f"--channels {c}{' or 3' if c == 1 else ''} and train on that")
    if ph != pw or ph < h or h != w:
        raise DiffauditError(f"the model works on {ph}x{pw} images but the run's are {h}x{w}; export with --size {h} "
                             "or larger (square) and train on that")
    if (pc, ph) == (c, h):
        return None, None
    return (lambda im: resize_uint8(im, size=ph, channels=pc)), (lambda x: from_model_pixels(x, (c, h, w)))


def _labels_check(num_class_embeds: int | None, num_classes: int | None) -> int:
    n = int(num_class_embeds or 0)
    if n and num_classes is not None and n != num_classes:
        raise DiffauditError(f"the model is conditioned on {n} classes but the run's dataset has {num_classes}")
    return n


# ---- the formats -------------------------------------------------------------------------------------------
def _diffaudit_model(folder: Path, image_shape, device) -> ContinuousModel:
    model, meta = load_score_model(folder, device=device)
    if tuple(meta["image_shape"]) != tuple(image_shape):
        raise DiffauditError(f"{folder}'s model makes {meta['image_shape']} images but the run's are {list(image_shape)}")
    files = [folder / "model.safetensors"]
    return ContinuousModel(model, model.sde, image_shape=image_shape, num_classes=meta["model"].get("num_classes", 0),
                           model_id=digest(files, meta["sde"]),
                           described={"format": "diffaudit", "path": str(folder), "n_params": meta.get("n_params")})


def _discrete(net, unet_config: dict, scheduler: dict, default_sampler: str, *, files: list[Path], image_shape,
              num_classes, prediction_type, codec: Codec | None, pixel_shape, fmt: str, path: Path,
              default_steps: int | None = None) -> DiscreteModel:
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise DiffauditError(f"unknown prediction type '{prediction_type}'; choose one of {', '.join(PREDICTION_TYPES)}")
    to_pixels, from_pixels = pixel_transform(tuple(image_shape), pixel_shape)
    n_classes = _labels_check(unet_config.get("num_class_embeds"), num_classes)
    kind = prediction_type or scheduler.get("prediction_type", "epsilon")
    n_params = sum(p.numel() for p in net.parameters()) if isinstance(net, torch.nn.Module) else None
    clean = {k: v for k, v in scheduler.items() if not k.startswith("_")}
    return DiscreteModel(net, scheduler, prediction_type=kind, default_sampler=default_sampler,
                         default_steps=default_steps, image_shape=image_shape, pixel_shape=pixel_shape,
                         to_pixels=to_pixels, from_pixels=from_pixels, codec=codec, num_classes=n_classes,
                         model_id=digest(files, clean, kind),
                         described={"format": fmt, "path": str(path), "n_params": n_params,
                                    "scheduler_class": scheduler.get("_class_name")})


def _check_unet(unet, shape_needed: str) -> tuple[int, int]:
    cfg = unet.config
    size = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    if cfg.in_channels != cfg.out_channels and cfg.out_channels != 2 * cfg.in_channels:
        raise DiffauditError(f"the UNet maps {cfg.in_channels} to {cfg.out_channels} channels; {shape_needed}")
    return int(cfg.in_channels), int(size)


def _latent_codec(vae, kind: str, latent_shape: tuple[int, int, int]) -> Codec:
    scale = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
    if kind == "vae":
        def encode(x):
            return vae.encode(x).latent_dist.mode() * scale

        def decode(z):
            return vae.decode(z / scale).sample
    else:
        def encode(x):
            return vae.encode(x).latents * scale

        def decode(z):
            return vae.decode(z / scale).sample
    return Codec(encode=encode, decode=decode, latent_shape=latent_shape, kind=kind)


def _vae_pixel_shape(vae, latent_size: int) -> tuple[int, int, int]:
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return int(vae.config.in_channels), latent_size * factor, latent_size * factor


def _pipeline(folder: Path, *, image_shape, num_classes, scheduler, prediction_type, device) -> DiscreteModel:
    index = read_json(folder / "model_index.json")
    if "unet" not in index:
        raise DiffauditError(f"{folder / 'model_index.json'} names no unet; diffaudit audits UNet2DModel pipelines")
    unet, files = _diffusers_module(folder / "unet", ("UNet2DModel",))
    sched, default_sampler = _scheduler_config(scheduler if scheduler is not None else folder / "scheduler", None)
    channels, size = _check_unet(unet, "not a denoiser of its input")
    codec, pixel_shape, fmt = None, (channels, size, size), "diffusers-pipeline"
    for kind in ("vae", "vqvae"):
        if kind in index:
            vae, vae_files = _diffusers_module(folder / kind, ("AutoencoderKL", "VQModel"))
            vae = vae.to(device)
            files += vae_files
            codec = _latent_codec(vae, "vae" if type(vae).__name__ == "AutoencoderKL" else "vq", (channels, size, size))
            pixel_shape, fmt = _vae_pixel_shape(vae, size), f"diffusers-latent ({type(vae).__name__})"
    steps = 50 if codec is not None or default_sampler == "ddim" else None  # LDMPipeline's / DDIMPipeline's default
    return _discrete(unet.to(device), dict(unet.config), sched, default_sampler, files=files, image_shape=image_shape,
                     num_classes=num_classes, prediction_type=prediction_type, codec=codec, pixel_shape=pixel_shape,
                     fmt=fmt, path=folder, default_steps=steps)


def _bare_unet(folder: Path, *, image_shape, num_classes, scheduler, prediction_type, device) -> DiscreteModel:
    unet, files = _diffusers_module(folder, ("UNet2DModel",))
    sched, default_sampler = _scheduler_config(scheduler, folder.parent / "scheduler" if scheduler is None and
                                               (folder.parent / "scheduler").is_dir() else None)
    channels, size = _check_unet(unet, "not a denoiser of its input")
    return _discrete(unet.to(device), dict(unet.config), sched, default_sampler, files=files, image_shape=image_shape,
                     num_classes=num_classes, prediction_type=prediction_type, codec=None,
                     pixel_shape=(channels, size, size), fmt="diffusers-unet", path=folder,
                     default_steps=50 if default_sampler == "ddim" else None)


class _MonaiNet(torch.nn.Module):
    """MONAI's DiffusionModelUNet with one timestep per image, as it requires."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x, timestep, class_labels=None):
        t = torch.as_tensor(timestep, device=x.device).reshape(-1).expand(len(x))
        return self.net(x, t, class_labels=class_labels)


def monai_scheduler_config(cls_name: str, args: dict) -> tuple[dict, str]:
    """The diffusers scheduler config equivalent to a MONAI scheduler (same betas, clipping, variance, spacing)."""
    from monai.networks import schedulers

    if cls_name not in ("DDPMScheduler", "DDIMScheduler"):
        raise DiffauditError(f"MONAI scheduler '{cls_name}' is not supported; use DDPMScheduler or DDIMScheduler")
    try:
        s = getattr(schedulers, cls_name)(**args)
    except Exception as err:
        raise DiffauditError(f"monai.json: MONAI's {cls_name} refused its args: {err}") from None
    low, high = getattr(s, "clip_sample_values", (-1.0, 1.0))
    if low != -high:
        raise DiffauditError("a MONAI scheduler with an asymmetric clip range cannot be sampled by diffaudit")
    config = {"_class_name": cls_name, "num_train_timesteps": int(s.num_train_timesteps),
              "trained_betas": [float(b) for b in s.betas], "prediction_type": str(getattr(s.prediction_type, "value",
                                                                                         s.prediction_type)),
              "clip_sample": bool(s.clip_sample), "clip_sample_range": float(high),
              "timestep_spacing": "linspace"}  # MONAI's inference timesteps: linspace(N - 1, 0, steps)
    if cls_name == "DDPMScheduler":
        config["variance_type"] = str(s.variance_type.value if hasattr(s.variance_type, "value") else s.variance_type)
    else:
        config["set_alpha_to_one"] = bool(args.get("set_alpha_to_one", True))
        config["steps_offset"] = int(args.get("steps_offset", 0))
    return config, sampler_of_class(cls_name)


def _monai(folder: Path, *, image_shape, num_classes, scheduler, prediction_type, device) -> DiscreteModel:
    require("monai", "auditing a MONAI model")
    require("einops", "MONAI's DiffusionModelUNet")
    from monai.networks.nets import DiffusionModelUNet

    spec = read_json(folder / "monai.json")
    if not isinstance(spec, dict) or spec.get("format") != MONAI_FORMAT:
        raise DiffauditError(f"{folder / 'monai.json'} is not in the format {MONAI_FORMAT} (see diffaudit.models.load)")
    net_spec, sched_spec = spec.get("network", {}), spec.get("scheduler", {})
    if net_spec.get("class") != "DiffusionModelUNet":
        raise DiffauditError(f"monai.json: network class {net_spec.get('class')!r} is not supported; use DiffusionModelUNet")
    args = dict(net_spec.get("args", {}))
    if args.get("spatial_dims") != 2:
        raise DiffauditError("monai.json: diffaudit audits 2-D models (spatial_dims 2)")
    try:
        net = DiffusionModelUNet(**args)
    except Exception as err:
        raise DiffauditError(f"monai.json: DiffusionModelUNet refused its args: {err}") from None
    path = folder / spec.get("weights", "model.safetensors")
    if not path.is_file():
        raise DiffauditError(f"monai.json names weights {path.name}, which are not in {folder}")
    _load_into(net, path)
    net = _MonaiNet(net.eval().requires_grad_(False)).to(device)
    if scheduler is not None:
        sched, default_sampler = _scheduler_config(scheduler, None)
    else:
        sched, default_sampler = monai_scheduler_config(sched_spec.get("class", "DDPMScheduler"), sched_spec.get("args", {}))
    size = image_shape[1]
    if args.get("in_channels") != args.get("out_channels"):
        raise DiffauditError("monai.json: in_channels and out_channels must be equal (a denoiser of its input)")
    return _discrete(net, {"num_class_embeds": args.get("num_class_embeds")}, sched, default_sampler, files=[path],
                     image_shape=image_shape, num_classes=num_classes, prediction_type=prediction_type, codec=None,
                     pixel_shape=(int(args["in_channels"]), size, size), fmt="monai", path=folder,
                     default_steps=50 if default_sampler == "ddim" else None)


def load_model(path: str | Path, *, image_shape: tuple[int, int, int], num_classes: int | None = None,
               scheduler: str | None = None, prediction_type: str | None = None,
               device: str | torch.device = "auto") -> Generative:
    """The model saved at ``path`` (module docstring) for images of ``image_shape``; ``num_classes`` is the run's
    dataset's (checked against a class-conditional model's)."""
    folder = Path(path)
    if not folder.exists():
        raise DiffauditError(f"no model at {folder}; give the folder it was saved to (save_pretrained, or a train/ folder)")
    if folder.is_file():
        raise DiffauditError(f"{folder} is a file; give the folder the model was saved to (with its config)")
    dev = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    opts = dict(image_shape=tuple(image_shape), num_classes=num_classes, scheduler=scheduler,
                prediction_type=prediction_type, device=dev)
    if (folder / "diffaudit_sde.json").is_file():  # the diffusers copy of a diffaudit model: a continuous SDE's
        folder = folder.parent
    own = folder / "train" if (folder / "train" / "model.json").is_file() else folder
    if (own / "model.json").is_file() and (own / "model.safetensors").is_file():
        if scheduler is not None or prediction_type is not None:
            raise DiffauditError("--scheduler and --prediction-type apply to models trained elsewhere; a diffaudit "
                                 "model knows its SDE")
        return _diffaudit_model(own, tuple(image_shape), str(dev))
    if (folder / "model_index.json").is_file():
        return _pipeline(folder, **opts)
    if (folder / "monai.json").is_file():
        return _monai(folder, **opts)
    if (folder / "config.json").is_file():
        return _bare_unet(folder, **opts)
    raise DiffauditError(f"{folder} holds no model diffaudit can read: expected a diffusers pipeline (model_index.json), "
                         "a UNet2DModel folder (config.json) with --scheduler, a MONAI monai.json, or a diffaudit train/")


def sampling_defaults(path: str | Path, scheduler: str | None = None) -> dict:
    """The sampler and number of steps the model's own pipeline would use, read from its configs without loading its
    weights: {} for a continuous (diffaudit) model; DDPM: all training timesteps; DDIM and latent pipelines: 50."""
    folder = Path(path)
    if (folder / "diffaudit_sde.json").is_file() or (folder / "train" / "model.json").is_file() \
            or (folder / "model.json").is_file():
        return {}
    if not any((folder / name).is_file() for name in ("model_index.json", "monai.json", "config.json")):
        raise DiffauditError(f"{folder} holds no model diffaudit can read: expected a diffusers pipeline "
                             "(model_index.json), a UNet2DModel folder (config.json) with --scheduler, a MONAI "
                             "monai.json, or a diffaudit train/")
    if scheduler is not None:
        sched, sampler = _scheduler_config(scheduler, None)
    elif (folder / "monai.json").is_file():
        spec = read_json(folder / "monai.json").get("scheduler", {})
        sampler, sched = sampler_of_class(spec.get("class", "DDPMScheduler")), spec.get("args", {})
    else:
        where = folder / "scheduler" if (folder / "scheduler").is_dir() else folder.parent / "scheduler"
        sched, sampler = _scheduler_config(where, None)
    latent = (folder / "model_index.json").is_file() and any(
        k in read_json(folder / "model_index.json") for k in ("vae", "vqvae"))
    steps = 50 if sampler == "ddim" or latent else int(sched.get("num_train_timesteps", 1000))
    return {"sampler": sampler, "steps": steps}


# ---- the model of a run -----------------------------------------------------------------------------------------
def training_data(folder: Path, manifest: dict) -> dict:
    """What the model's folder (or the folder above a bare UNet) says about its training set (``export.json``)."""
    for where in (folder, folder.parent):
        if (where / EXPORT_RECORD).is_file():
            return check_training_record(where, manifest)
    return check_training_record(folder, manifest)


def register(run: Path, model: Generative, spec: dict, manifest: dict) -> dict:
    """Record in ``<run>/train/external.json`` that ``run`` audits ``model`` (loaded from ``spec``): refused when the run
    already audits another model (its own trained one, or another external one), or when the model says it was trained
    on another run's export."""
    record = {"path": str(Path(spec["path"]).resolve()), "scheduler": spec.get("scheduler"),
              "prediction_type": spec.get("prediction_type"), "digest": model.model_id, "model": model.describe(),
              "training_data": training_data(Path(spec["path"]), manifest)}
    path = run / "train" / EXTERNAL
    if (run / "train" / "model.json").is_file():
        raise DiffauditError(f"{run} holds a model diffaudit trained; audit the model at {spec['path']} in a new "
                             "--run-dir (a run directory audits one model)")
    if path.is_file():
        old = read_json(path)
        if old.get("digest") != model.model_id:
            raise DiffauditError(f"{run} audits model {old.get('digest')} ({old.get('path')}), not this one "
                                 f"({model.model_id}); use a new --run-dir for another model")
        return old
    write_json(path, record)
    return record


def run_model(run: Path, *, manifest: dict, model: str | None = None, scheduler: str | None = None,
              prediction_type: str | None = None, num_classes: int | None = None,
              device: str = "auto") -> Generative:
    """The model run ``run`` audits: the one given (registered for the run on first use), the one registered earlier
    (checked unchanged by its digest), or the run's own trained model."""
    image_shape = tuple(manifest["image_shape"])
    path = run / "train" / EXTERNAL
    if model is not None:
        m = load_model(model, image_shape=image_shape, num_classes=num_classes, scheduler=scheduler,
                       prediction_type=prediction_type, device=device)
        if m.continuous and Path(model).resolve() in (run.resolve(), (run / "train").resolve()):
            return m
        record = register(run, m, {"path": model, "scheduler": scheduler, "prediction_type": prediction_type}, manifest)
        m.described["training_data"] = record["training_data"]
        return m
    if path.is_file():
        rec = read_json(path)
        m = load_model(rec["path"], image_shape=image_shape, num_classes=num_classes, scheduler=rec.get("scheduler"),
                       prediction_type=rec.get("prediction_type"), device=device)
        if m.model_id != rec["digest"]:
            raise DiffauditError(f"the model at {rec['path']} changed since this run started auditing it (digest "
                                 f"{rec['digest']}, now {m.model_id}); audit the new model in a new --run-dir")
        m.described["training_data"] = rec.get("training_data")
        return m
    if not (run / "train" / "model.json").is_file():
        raise DiffauditError(f"{run} has no model: train one ('diffaudit train') or give the model to audit with --model")
    return _diffaudit_model(run / "train", image_shape, device)


def provenance(model: Generative, run: Path | None = None) -> dict:
    """What a results.json section records about the model that produced it (its path relative to ``run`` when inside
    it, so results.json does not depend on where the run directory lies)."""
    d = model.describe()
    path = d.get("path")
    out = {"digest": model.model_id, "format": d.get("format"),
           "path": run_relative(run, Path(path)) if run is not None and path else path}
    if d.get("training_data") is not None:
        out["training_data_confirmed"] = bool(d["training_data"].get("confirmed"))
    return out

