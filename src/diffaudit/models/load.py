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
refuses anything that would run code. Every config and weights file is read from inside the model's folder (after
symlinks; a Hugging Face cache snapshot's links into its ``blobs/`` count as inside), and every JSON config must be
one JSON object. A model whose channels, image size, classes or schedule cannot be the run's is refused before any
work, and before the run records it. The model's digest is the SHA-256 of its weight files and of its scheduler
config and prediction type: every results.json section records it (provenance), and a run directory audits one model.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any, Callable

import torch

from ..data.export import EXPORT_RECORD, check_training_record
from ..device import resolve_device
from ..diffusion.discrete import (
    PREDICTION_TYPES,
    Codec,
    DiscreteModel,
    check_schedule_config,
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
WEIGHT_SUFFIXES = (".safetensors", *UNSAFE_SUFFIXES)
MONAI_FORMAT = "diffaudit-monai/1"
EXTERNAL = "external.json"  # <run>/train/external.json: the model a run audits when it did not train it
SAVE_FIX = "re-save the model with save_pretrained"
MONAI_FIX = "write it as diffaudit.models.load describes (a JSON object with format, network, scheduler, weights)"


def _config(path: Path, fix: str) -> dict:
    """A model's JSON config: one JSON object, refused in one line otherwise (binary, not JSON, a list...)."""
    return read_json(path, expect=dict, fix=fix)


def _object(value: Any, where: str, fix: str = MONAI_FIX) -> dict:
    if not isinstance(value, dict):
        raise DiffauditError(f"{where} must be a JSON object ({{...}}), not {type(value).__name__}; {fix}")
    return value


def inside(path: Path, root: Path, what: str) -> Path:
    """``path`` when it lies inside the model folder ``root`` after following symlinks; refused otherwise, so that a
    config cannot make diffaudit read another file of the machine. A Hugging Face cache snapshot
    (``.../snapshots/<rev>``) links its files into the repository's ``blobs/``, which counts as inside."""
    real, top = Path(path).resolve(), Path(root).resolve()
    allowed = [top] + ([top.parent.parent / "blobs"] if top.parent.name == "snapshots" else [])
    if not any(real == a or a in real.parents for a in allowed):
        raise DiffauditError(f"{what} {path} lies outside the model folder {root} (it resolves to {real}); diffaudit "
                             "reads a model only from its own folder: copy the file into it")
    return Path(path)


def _magic(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(4)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, or of a torch file read with ``weights_only=True`` (no code is run)."""
    from safetensors.torch import load_file

    if path.suffix not in WEIGHT_SUFFIXES:
        raise DiffauditError(f"{path} is not a weights file (a .safetensors file, or a .bin/.pt/.pth state dict); "
                             "name the model's weights file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as err:
            raise DiffauditError(f"{path} is not a readable safetensors file ({err})") from None
    head = _magic(path)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch.save's zip, or a pickle (protocol >= 2)
        raise DiffauditError(f"{path} is not a weights file (neither a torch state dict nor safetensors); give the file "
                             "torch.save(model.state_dict(), ...) or safetensors wrote")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # the weights-only unpickler met something other than tensors: code
        if "weights only" not in str(err).lower() or "EOF" in str(err):
            raise DiffauditError(f"{path} is not a readable torch file ({type(err).__name__}); it is damaged or "
                                 "truncated: re-save the weights as safetensors") from None
        raise DiffauditError(f"{path} cannot be read without running code from it ({type(err).__name__}); re-save the "
                             "weights as safetensors (safetensors.torch.save_file(model.state_dict(), ...))") from None
    except Exception as err:  # a damaged or truncated file
        raise DiffauditError(f"{path} is not a readable torch file ({type(err).__name__}); it is damaged or truncated: "
                             "re-save the weights as safetensors") from None
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


def _built(build: Callable[[], torch.nn.Module], path: Path, what: str) -> torch.nn.Module:
    """``build()`` once its weights file ``path`` is known to fit it: the module is first built on the meta device
    (names and shapes, no memory) and checked against the weights, so a config that describes a far larger network
    than its weights hold is refused before any memory is taken for it; then built for real and loaded."""
    try:
        with torch.device("meta"):
            skeleton = build()
    except Exception as err:
        raise DiffauditError(f"{what} does not build: {' '.join(str(err).split())}") from None
    state = load_weights(path)
    _fits(skeleton, state, path)
    module = build()
    _load_into(module, path, state)
    return module


def _fits(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise DiffauditError(f"{path} does not fit its config (missing {missing[:3]}, unexpected {unexpected[:3]}, "
                             f"wrong shapes {wrong[:3]}); the weights and config.json come from different models")


def _load_into(module: torch.nn.Module, path: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    state = load_weights(path) if state is None else state
    _fits(module, state, path)
    for name, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise DiffauditError(f"{path} has NaN/Inf values in '{name}'; the model diverged")
    module.load_state_dict(state)


def _diffusers_module(folder: Path, expected: tuple[str, ...], root: Path):
    """A diffusers model (UNet2DModel, AutoencoderKL, VQModel) from its config and weights inside the model folder
    ``root``, no code from the files."""
    import diffusers

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise DiffauditError(f"{folder} has no config.json; save the model with save_pretrained")
    config = _config(inside(config_path, root, "the config"), SAVE_FIX)
    name = config.get("_class_name")
    if not isinstance(name, str) or name not in expected:
        raise DiffauditError(f"{config_path} describes a {name!r}; expected {' or '.join(expected)}")
    cls = getattr(diffusers, name)
    path = inside(weight_file(folder), root, "the weights")
    module = _built(lambda: cls.from_config(config), path, f"{config_path} ({name})")
    return module.eval().requires_grad_(False), [path]


def _scheduler_config(spec: str | Path | dict | None, folder: Path | None,
                      root: Path | None = None) -> tuple[dict, str, str]:
    """(scheduler config, default sampler, where it came from) from ``spec`` (--scheduler: a folder, a JSON file, a
    name ddpm/ddim, or a dict) or, without one, from the model's own scheduler folder ``folder`` inside ``root``."""
    if isinstance(spec, dict):
        config, source = dict(spec), "the scheduler config given"
    elif spec in ("ddpm", "ddim"):
        cls = scheduler_class(str(spec))
        return dict(cls().config), str(spec), f"--scheduler {spec}"
    else:
        path = Path(spec) if spec is not None else folder
        if path is None:
            raise DiffauditError("a bare UNet folder needs its scheduler: --scheduler FOLDER, a scheduler_config.json, "
                                 "or ddpm/ddim for that scheduler's defaults")
        if path.is_dir():
            path = path / "scheduler_config.json"
        if not path.is_file():
            raise DiffauditError(f"no scheduler config at {path}; give the scheduler/ folder saved with the model")
        if spec is None and root is not None:
            inside(path, root, "the scheduler config")
        config, source = _config(path, "re-save the scheduler with scheduler.save_pretrained"), str(path)
    name = config.get("_class_name")
    if not isinstance(name, str):
        raise DiffauditError(f"{source} has no _class_name naming the scheduler class; save it with "
                             "scheduler.save_pretrained")
    check_schedule_config(config, source)
    return config, sampler_of_class(name), source


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
def pixel_transform(image_shape: tuple[int, ...], pixel_shape: tuple[int, ...]):
    """(to_pixels, from_pixels) between the run's images and a model trained on an export of them (grey repeated to
    RGB, upsampled), refusing a shape that cannot be one; a volume model must work on the run's volumes as they are."""
    if len(image_shape) != len(pixel_shape):
        kinds = {3: "2D images", 4: "3D volumes"}
        raise DiffauditError(f"the model works on {kinds.get(len(pixel_shape), pixel_shape)} but the run's are "
                             f"{kinds.get(len(image_shape), image_shape)}; audit it in a run prepared from "
                             f"{'volumes (--size D,H,W)' if len(pixel_shape) == 4 else 'images (--size S)'}")
    if len(image_shape) == 4:
        if tuple(pixel_shape) != tuple(image_shape):
            raise DiffauditError(f"the model works on volumes of {list(pixel_shape)} but the run's are "
                                 f"{list(image_shape)}; prepare the run at --size {','.join(map(str, pixel_shape[1:]))}")
        return None, None
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
    for name in ("model.json", "model.safetensors"):
        inside(folder / name, folder, "the model file")
    _config(folder / "model.json", "give the train/ folder of a finished diffaudit run")  # one JSON object
    model, meta = load_score_model(folder, device=device)
    if tuple(meta["image_shape"]) != tuple(image_shape):
        raise DiffauditError(f"{folder}'s model makes {meta['image_shape']} images but the run's are {list(image_shape)}")
    files = [folder / "model.safetensors"]
    return ContinuousModel(model, model.sde, image_shape=image_shape, num_classes=meta["model"].get("num_classes", 0),
                           covariates=meta["model"].get("covariates", 0), model_id=digest(files, meta["sde"]),
                           described={"format": "diffaudit", "path": str(folder), "n_params": meta.get("n_params")})


def _discrete(net, unet_config: dict, scheduler: dict, default_sampler: str, *, files: list[Path], image_shape,
              num_classes, prediction_type, codec: Codec | None, pixel_shape, fmt: str, path: Path,
              default_steps: int | None = None, source: str = "the scheduler config") -> DiscreteModel:
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
                         model_id=digest(files, clean, kind), source=source,
                         described={"format": fmt, "path": str(path), "n_params": n_params,
                                    "scheduler_class": scheduler.get("_class_name")})


def _check_unet(unet, shape_needed: str, config_path: Path) -> tuple[int, int]:
    cfg = unet.config
    size = cfg.sample_size
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise DiffauditError(f"{config_path}: sample_size {list(size)} is not square; diffaudit audits square "
                                 "images: train the model on a square export (diffaudit export --size S) and save it "
                                 "with sample_size S")
        size = size[0]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise DiffauditError(f"{config_path}: sample_size {size!r} is not an image size; set it to the size (one "
                             "number) the model was trained at")
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


def _model_index(folder: Path) -> dict:
    return _config(inside(folder / "model_index.json", folder, "the pipeline index"),
                   "re-save the pipeline with save_pretrained")


def _pipeline(folder: Path, *, image_shape, num_classes, scheduler, prediction_type, device) -> DiscreteModel:
    index = _model_index(folder)
    if "unet" not in index:
        raise DiffauditError(f"{folder / 'model_index.json'} names no unet; diffaudit audits UNet2DModel pipelines")
    sched, default_sampler, source = _scheduler_config(scheduler, folder / "scheduler", folder)
    unet, files = _diffusers_module(folder / "unet", ("UNet2DModel",), folder)
    channels, size = _check_unet(unet, "not a denoiser of its input", folder / "unet" / "config.json")
    codec, pixel_shape, fmt = None, (channels, size, size), "diffusers-pipeline"
    for kind in ("vae", "vqvae"):
        if kind in index:
            vae, vae_files = _diffusers_module(folder / kind, ("AutoencoderKL", "VQModel"), folder)
            vae = vae.to(device)
            files += vae_files
            codec = _latent_codec(vae, "vae" if type(vae).__name__ == "AutoencoderKL" else "vq", (channels, size, size))
            pixel_shape, fmt = _vae_pixel_shape(vae, size), f"diffusers-latent ({type(vae).__name__})"
    steps = 50 if codec is not None or default_sampler == "ddim" else None  # LDMPipeline's / DDIMPipeline's default
    return _discrete(unet.to(device), dict(unet.config), sched, default_sampler, files=files, image_shape=image_shape,
                     num_classes=num_classes, prediction_type=prediction_type, codec=codec, pixel_shape=pixel_shape,
                     fmt=fmt, path=folder, default_steps=steps, source=source)


def _sibling_scheduler(folder: Path) -> Path | None:
    """The scheduler/ folder beside a bare UNet folder (a pipeline's unet/ given on its own), if there is one."""
    return folder.parent / "scheduler" if (folder.parent / "scheduler").is_dir() else None


def _bare_unet(folder: Path, *, image_shape, num_classes, scheduler, prediction_type, device) -> DiscreteModel:
    sched, default_sampler, source = _scheduler_config(scheduler, _sibling_scheduler(folder), folder.parent)
    unet, files = _diffusers_module(folder, ("UNet2DModel",), folder)
    channels, size = _check_unet(unet, "not a denoiser of its input", folder / "config.json")
    return _discrete(unet.to(device), dict(unet.config), sched, default_sampler, files=files, image_shape=image_shape,
                     num_classes=num_classes, prediction_type=prediction_type, codec=None,
                     pixel_shape=(channels, size, size), fmt="diffusers-unet", path=folder,
                     default_steps=50 if default_sampler == "ddim" else None, source=source)


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

    if not isinstance(cls_name, str) or cls_name not in ("DDPMScheduler", "DDIMScheduler"):
        raise DiffauditError(f"MONAI scheduler {cls_name!r} is not supported; use DDPMScheduler or DDIMScheduler")
    args = _object(args, "monai.json: scheduler.args")
    check_schedule_config({"num_train_timesteps": args.get("num_train_timesteps", 1000)}, "monai.json: scheduler.args")
    try:
        s = getattr(schedulers, cls_name)(**args)
    except Exception as err:
        raise DiffauditError(f"monai.json: MONAI's {cls_name} refused its args: {' '.join(str(err).split())}") from None
    betas = torch.as_tensor(s.betas, dtype=torch.float64)
    bad = ~((betas > 0) & (betas < 1))
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        raise DiffauditError(f"monai.json: scheduler.args give beta_{k} = {float(betas[k]):.4g}, outside (0, 1); choose "
                             "a schedule (beta_start, beta_end) whose betas all lie strictly between 0 and 1")
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

    spec = _monai_spec(folder)
    net_spec = spec.get("network", {})
    if net_spec.get("class") != "DiffusionModelUNet":
        raise DiffauditError(f"monai.json: network class {net_spec.get('class')!r} is not supported; use DiffusionModelUNet")
    args = dict(_object(net_spec.get("args", {}), "monai.json: network.args"))
    if args.get("spatial_dims") not in (2, 3):
        raise DiffauditError("monai.json: network.args spatial_dims must be 2 (images) or 3 (volumes)")
    if args.get("in_channels") != args.get("out_channels") or isinstance(args.get("in_channels"), bool) \
            or not isinstance(args.get("in_channels"), int):
        raise DiffauditError("monai.json: network.args in_channels and out_channels must be the same whole number (a "
                             "denoiser of its input)")
    if scheduler is not None:
        sched, default_sampler, source = _scheduler_config(scheduler, None)
    else:
        sched, default_sampler = _monai_scheduler(spec)
        source = f"{folder / 'monai.json'}: scheduler"
    if spec.get("autoencoder") is not None:  # before any weights are read
        _check_latent(_object(spec["autoencoder"], "monai.json: autoencoder"), args)
    path = _monai_weights(folder, spec)
    net = _built(lambda: DiffusionModelUNet(**args), path, "monai.json: DiffusionModelUNet with its args")
    net = _MonaiNet(net.eval().requires_grad_(False)).to(device)
    if args["spatial_dims"] == 3 and len(image_shape) != 4:
        raise DiffauditError("monai.json: the model is a 3D network (spatial_dims 3) but the run's are 2D images; audit "
                             "it in a run prepared from volumes (--size D,H,W)")
    if args["spatial_dims"] == 2 and len(image_shape) == 4:
        raise DiffauditError("monai.json: the model is a 2D network (spatial_dims 2) but the run's are volumes; audit it "
                             "in a run prepared from images")
    # a 2D model's size is the run's (its side is not in its args); a volume model works on the run's volumes as is
    sides = (image_shape[1],) * 2 if args["spatial_dims"] == 2 else tuple(image_shape[1:])
    files, codec, channels, fmt = [path], None, int(args["in_channels"]), "monai"
    if spec.get("autoencoder") is not None:
        codec, ae_path, channels = _monai_autoencoder(folder, spec["autoencoder"], args, sides, device)
        files.append(ae_path)
        fmt = "monai-latent (AutoencoderKL)"
    return _discrete(net, {"num_class_embeds": args.get("num_class_embeds")}, sched, default_sampler, files=files,
                     image_shape=image_shape, num_classes=num_classes, prediction_type=prediction_type, codec=codec,
                     pixel_shape=(channels, *sides), fmt=fmt, path=folder,
                     default_steps=50 if default_sampler == "ddim" or codec is not None else None, source=source)


def _check_latent(spec: dict, unet_args: dict) -> tuple[dict, int, float, tuple[float, float]]:
    """``monai.json``'s ``autoencoder`` checked against the diffusion network's args: (its args, latent channels,
    scale factor, pixel range)."""
    if spec.get("class", "AutoencoderKL") != "AutoencoderKL":
        raise DiffauditError(f"monai.json: autoencoder class {spec.get('class')!r} is not supported; use AutoencoderKL")
    args = dict(_object(spec.get("args", {}), "monai.json: autoencoder.args"))
    if args.get("spatial_dims") != unet_args["spatial_dims"]:
        raise DiffauditError(f"monai.json: the autoencoder's spatial_dims {args.get('spatial_dims')!r} is not the "
                             f"diffusion network's ({unet_args['spatial_dims']})")
    latent = args.get("latent_channels", 3)
    if latent != unet_args["in_channels"]:
        raise DiffauditError(f"monai.json: the autoencoder makes {latent} latent channels but the diffusion network "
                             f"takes {unet_args['in_channels']}; they must be the same")
    scale, span = spec.get("scale_factor", 1.0), spec.get("pixel_range", [0.0, 1.0])
    numbers = lambda *v: all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)  # noqa: E731
    if (not numbers(scale) or not scale > 0 or not isinstance(span, list) or len(span) != 2 or not numbers(*span)
            or not span[1] > span[0]):
        raise DiffauditError("monai.json: autoencoder.scale_factor must be a positive number and pixel_range [low, high] "
                             "with low < high (MONAI's tutorials: [0, 1])")
    return args, int(latent), float(scale), (float(span[0]), float(span[1]))


def _monai_autoencoder(folder: Path, spec: dict, unet_args: dict, sides: tuple[int, ...],
                       device) -> tuple[Codec, Path, int]:
    """A MONAI latent model's ``AutoencoderKL`` (``monai.json`` ``autoencoder``: its class, args, weights,
    ``scale_factor`` and ``pixel_range``) as the codec of the diffusion network, checked against it and the run's
    sides; returns (the codec, its weights file, the pixel channels)."""
    from monai.networks.nets import AutoencoderKL

    args, latent, scale, (low, high) = _check_latent(spec, unet_args)
    weights = _monai_weights(folder, {"weights": spec.get("weights", "autoencoder.safetensors")})
    ae = _built(lambda: AutoencoderKL(**args), weights, "monai.json: AutoencoderKL with its args")
    ae = ae.eval().requires_grad_(False).to(device)
    halvings = len(args.get("channels", (32, 64, 64, 64))) - 1  # each level but the last halves every side
    factor = 2 ** halvings
    if any(side % factor for side in sides):
        raise DiffauditError(f"the autoencoder halves every side {halvings} times, so the run's sides {'x'.join(map(str, sides))} must be multiples of {factor}; "
                             "prepare the data at such a --size")
    span = (high - low) / 2.0

    def encode(x: torch.Tensor) -> torch.Tensor:  # model-space pixels [-1, 1] -> the autoencoder's range -> latents
        return ae.encode((x + 1) * span + low)[0] * scale

    def decode(z: torch.Tensor) -> torch.Tensor:
        return (ae.decode(z / scale) - low) / span - 1

    latent_shape = (int(latent), *(side // factor for side in sides))
    return Codec(encode=encode, decode=decode, latent_shape=latent_shape, kind="vae"), weights, int(args.get("in_channels", 1))


def _monai_spec(folder: Path) -> dict:
    """``monai.json``: a JSON object of the format MONAI_FORMAT whose network and scheduler are JSON objects."""
    path = inside(folder / "monai.json", folder, "the config")
    spec = _config(path, MONAI_FIX)
    if spec.get("format") != MONAI_FORMAT:
        raise DiffauditError(f"{path} is not in the format {MONAI_FORMAT} (see diffaudit.models.load)")
    for key in ("network", "scheduler"):
        _object(spec.get(key, {}), f"{path}: {key}")
    return spec


def _monai_scheduler(spec: dict) -> tuple[dict, str]:
    sched_spec = spec.get("scheduler", {})
    return monai_scheduler_config(sched_spec.get("class", "DDPMScheduler"), sched_spec.get("args", {}))


def _monai_weights(folder: Path, spec: dict) -> Path:
    name = spec.get("weights", "model.safetensors")
    if not isinstance(name, str) or not name:
        raise DiffauditError(f"monai.json: weights must name the weights file in {folder}, e.g. \"model.safetensors\"")
    path = inside(folder / name, folder, "monai.json's weights")
    if not path.is_file():
        raise DiffauditError(f"monai.json names weights {name}, which are not in {folder}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise DiffauditError(f"monai.json names weights {name}, which is not a weights file (a .safetensors file, or a "
                             ".bin/.pt/.pth state dict)")
    return path


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
    weights: {} for a continuous (diffaudit) model; DDPM: all training timesteps; DDIM and latent pipelines: 50. The
    configs are checked as :func:`load_model` checks them (JSON objects inside the model folder, the schedule)."""
    folder = Path(path)
    if folder.is_file():
        raise DiffauditError(f"{folder} is a file; give the folder the model was saved to (with its config)")
    if (folder / "diffaudit_sde.json").is_file() or (folder / "train" / "model.json").is_file() \
            or (folder / "model.json").is_file():
        return {}
    pipeline, monai = (folder / "model_index.json").is_file(), (folder / "monai.json").is_file()
    if not (pipeline or monai or (folder / "config.json").is_file()):
        raise DiffauditError(f"{folder} holds no model diffaudit can read: expected a diffusers pipeline "
                             "(model_index.json), a UNet2DModel folder (config.json) with --scheduler, a MONAI "
                             "monai.json, or a diffaudit train/")
    index = _model_index(folder) if pipeline else {}
    if scheduler is not None:
        sched, sampler, _ = _scheduler_config(scheduler, None)
    elif pipeline:
        sched, sampler, _ = _scheduler_config(None, folder / "scheduler", folder)
    elif monai:
        require("monai", "auditing a MONAI model")
        sched, sampler = _monai_scheduler(_monai_spec(folder))
    else:
        sched, sampler, _ = _scheduler_config(None, _sibling_scheduler(folder), folder.parent)
    latent = any(k in index for k in ("vae", "vqvae"))
    steps = 50 if sampler == "ddim" or latent else int(sched.get("num_train_timesteps", 1000))
    return {"sampler": sampler, "steps": steps}


# ---- the model of a run -----------------------------------------------------------------------------------------
def training_data(folder: Path, manifest: dict) -> dict:
    """What the model's folder (or the folder above a bare UNet) says about its training set (``export.json``)."""
    for where in (folder, folder.parent):
        if (where / EXPORT_RECORD).is_file():
            inside(where / EXPORT_RECORD, where, "the training-set record")
            return check_training_record(where, manifest)
    return check_training_record(folder, manifest)


def registration(run: Path, model: Generative, spec: dict, manifest: dict) -> tuple[dict, bool]:
    """(the record of ``<run>/train/external.json`` for ``model``, loaded from ``spec``; whether it is still to be
    written), writing nothing: refused when the run already audits another model (its own trained one, or another
    external one), or when the model says it was trained on another run's export."""
    record = {"path": str(Path(spec["path"]).resolve()), "scheduler": spec.get("scheduler"),
              "prediction_type": spec.get("prediction_type"), "digest": model.model_id, "model": model.describe(),
              "training_data": training_data(Path(spec["path"]), manifest)}
    path = run / "train" / EXTERNAL
    if (run / "train" / "model.json").is_file():
        raise DiffauditError(f"{run} holds a model diffaudit trained; audit the model at {spec['path']} in a new "
                             "--run-dir (a run directory audits one model)")
    if path.is_file():
        old = read_json(path, expect=dict)
        if old.get("digest") != model.model_id:
            raise DiffauditError(f"{run} audits model {old.get('digest')} ({old.get('path')}), not this one "
                                 f"({model.model_id}); use a new --run-dir for another model")
        return old, False
    return record, True


def register(run: Path, model: Generative, spec: dict, manifest: dict) -> dict:
    """Record in ``<run>/train/external.json`` that ``run`` audits ``model`` (loaded from ``spec``), refused as
    :func:`registration` says."""
    record, new = registration(run, model, spec, manifest)
    if new:
        write_json(run / "train" / EXTERNAL, record)
    return record


def run_model(run: Path, *, manifest: dict, model: str | None = None, scheduler: str | None = None,
              prediction_type: str | None = None, num_classes: int | None = None,
              device: str = "auto", check: Callable[[Generative], Any] | None = None) -> Generative:
    """The model run ``run`` audits: the one given (registered for the run on first use), the one registered earlier
    (checked unchanged by its digest), or the run's own trained model. ``check(model)`` runs the caller's own checks
    (its sampler and steps against the model's schedule, say) before a model given is registered, so a model refused
    for any reason leaves the run as it was."""
    image_shape = tuple(manifest["image_shape"])
    path = run / "train" / EXTERNAL
    if model is not None:
        m = load_model(model, image_shape=image_shape, num_classes=num_classes, scheduler=scheduler,
                       prediction_type=prediction_type, device=device)
        if check is not None:
            check(m)
        if m.continuous and Path(model).resolve() in (run.resolve(), (run / "train").resolve()):
            return m
        record = register(run, m, {"path": model, "scheduler": scheduler, "prediction_type": prediction_type}, manifest)
        m.described["training_data"] = record["training_data"]
        return m
    if path.is_file():
        rec = read_json(path, expect=dict)
        if not all(isinstance(rec.get(k), str) for k in ("path", "digest")):
            raise DiffauditError(f"{path} does not name the model this run audits (its 'path' and 'digest'): it was "
                                 "edited or damaged; delete it and give the model again with --model")
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

