"""A copy-detection embedding for the census, trained on the run's own real images with a self-supervised contrastive
loss (SimCLR's NT-Xent, as Dar et al. 2024 did for medical diffusion models), or one the user gives.

No pretrained SSCD or DINO weights can be had offline, so the census trains its own: a ResNet10 (torchvision's in 2D,
MONAI's in 3D) whose 128 features are matched by cosine distance, trained so that two views of one image are each
other's nearest among a batch of views. The views keep the identity of the image and change what a generated copy
may change: a translation by up to 1/16 of the side, brightness and contrast by up to 10%, Gaussian noise of std 0.03.
It sees D_p, the unused training images and the evaluation split, never the test split the threshold is checked on.
The loss is written here (15 lines): ``lightly`` has it, but brings in PyTorch Lightning and Hydra.

A user's encoder (``--embedding``): a TorchScript file (``torch.jit.save``; a plain pickle is refused, as model
weights are) or the safetensors of a census embedding (with its ``embedding.json`` beside it), with the input side it
takes (``--embedding-size``: images are area-resized to it); its output is flattened to one feature vector per image.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ...errors import DiffauditError
from ...io import load_tensors, read_json, save_tensors, write_json
from ...rng import derive_seed
from .space import EmbeddingSpace

FEATURES = 128
TEMPERATURE = 0.1
FORMAT = "diffaudit-census-embedding/1"


def build_encoder(channels: int, dims: int, side: int) -> nn.Module:
    """A ResNet10 with :data:`FEATURES` outputs for ``channels``-channel images (``dims`` 2) or volumes (3)."""
    if dims == 3:
        from ...adversary.classifiers import volume_resnet

        return volume_resnet("resnet10", channels, outputs=FEATURES)
    from torchvision.models.resnet import BasicBlock, ResNet

    net = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=FEATURES)
    small = side < 64
    net.conv1 = nn.Conv2d(channels, 64, kernel_size=3 if small else 7, stride=1 if small else 2,
                          padding=1 if small else 3, bias=False)
    return net


def views(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """An identity-keeping view of each image of ``x`` (float in [0, 1], [B, C, *spatial]): shifted by up to 1/16 of
    each side (edges repeated), brightness and contrast within 10%, Gaussian noise of std 0.03."""
    b, sides = len(x), x.shape[2:]
    out = torch.empty_like(x)
    for i in range(b):
        shifts = [int(torch.randint(-(s // 16), s // 16 + 1, (1,), generator=g)) for s in sides]
        pad = [v for s in reversed(shifts) for v in (max(s, 0), max(-s, 0))]
        padded = F.pad(x[i:i + 1], pad, mode="replicate")
        crop = tuple(slice(max(-s, 0), max(-s, 0) + n) for s, n in zip(shifts, sides))
        out[i] = padded[(0, slice(None), *crop)]
    gain = 1 + 0.2 * (torch.rand((b,) + (1,) * (x.ndim - 1), generator=g) - 0.5)
    bias = 0.2 * (torch.rand((b,) + (1,) * (x.ndim - 1), generator=g) - 0.5)
    mean = out.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
    out = (out - mean) * gain + mean + bias
    return (out + 0.03 * torch.randn(out.shape, generator=g)).clamp(0, 1)


def nt_xent(z: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """SimCLR's loss for 2B normalised projections ``z`` whose rows i and i + B are two views of one image."""
    n = len(z) // 2
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(len(z), dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def train_embedding(folder: Path, images: np.ndarray, *, steps: int = 300, batch_size: int = 64, lr: float = 1e-3,
                    seed: int = 0, data_id: str = "", progress: bool = True) -> nn.Module:
    """Train (or, when ``folder`` holds one of this config and data, load) the census embedding on uint8 ``images``
    [N, C, *spatial]; saved as ``model.safetensors`` + ``embedding.json`` in ``folder``."""
    dims, channels, side = images.ndim - 2, int(images.shape[1]), int(min(images.shape[2:]))
    record = {"format": FORMAT, "channels": channels, "dims": dims, "side": side, "features": FEATURES,
              "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "data_id": data_id,
              "temperature": TEMPERATURE, "trained_on": int(len(images))}
    meta = folder / "embedding.json"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, 1))
        net = build_encoder(channels, dims, side)
    if meta.is_file() and read_json(meta).get("config") == record and (folder / "model.safetensors").is_file():
        net.load_state_dict(load_tensors(folder / "model.safetensors"))
        return net.eval()
    head = nn.Sequential(nn.Linear(FEATURES, FEATURES), nn.ReLU(), nn.Linear(FEATURES, 64))
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=lr)
    data = torch.from_numpy(np.ascontiguousarray(images)).float() / 255
    g = torch.Generator().manual_seed(derive_seed(seed, 2))
    batch = min(batch_size, len(images))
    losses = []
    net.train()
    for _ in tqdm(range(steps), disable=not progress, desc="census embedding (NT-Xent)", unit="step"):
        x = data[torch.randperm(len(data), generator=g)[:batch]]
        z = F.normalize(head(net(torch.cat([views(x, g), views(x, g)]))), dim=1)
        loss = nt_xent(z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    net.eval()
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(folder / "model.safetensors", net.state_dict())
    write_json(meta, {"config": record, "final_loss": float(np.mean(losses[-10:])),
                      "chance_loss": float(np.log(2 * batch - 1))})
    return net


def encoder_space(net: nn.Module, *, side: int | None, name: str, described: dict) -> EmbeddingSpace:
    """The cosine space of ``net``'s flattened outputs, the images area-resized to ``side`` first (None: as they are)."""
    def encode(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)).float() / 255
        if side is not None and tuple(x.shape[2:]) != (side,) * (x.ndim - 2):
            x = F.interpolate(x, size=(side,) * (x.ndim - 2), mode="area")
        with torch.no_grad():
            out = net(x)
        return out.reshape(len(images), -1).double().numpy()

    return EmbeddingSpace(encode, name=name, described=described)


def load_user_encoder(path: str | Path, *, side: int, channels: int, dims: int) -> tuple[nn.Module, dict]:
    """A user's encoder (module docstring), checked on a probe batch of the run's shape at ``side``."""
    path = Path(path)
    if not path.is_file():
        raise DiffauditError(f"--embedding {path}: no such file; give a TorchScript file (torch.jit.save) or a census "
                             "embedding's model.safetensors")
    if path.suffix == ".safetensors":
        meta = path.parent / "embedding.json"
        if not meta.is_file():
            raise DiffauditError(f"{path} has no embedding.json beside it; a safetensors encoder must be a census "
                                 "embedding (its embedding.json names the architecture), or give a TorchScript file")
        cfg = read_json(meta).get("config") or {}
        if cfg.get("format") != FORMAT:
            raise DiffauditError(f"{meta} is not a census embedding record ({FORMAT})")
        net = build_encoder(int(cfg["channels"]), int(cfg["dims"]), int(cfg["side"]))
        try:
            net.load_state_dict(load_tensors(path))
        except (RuntimeError, DiffauditError) as err:
            raise DiffauditError(f"{path} does not fit the census embedding of {meta} ({str(err).splitlines()[0]})") from None
        kind = "census embedding (safetensors)"
    else:
        if not zipfile.is_zipfile(path):
            raise DiffauditError(f"--embedding {path} is not a TorchScript archive (a plain pickle would run code on "
                                 "loading and is refused); save the encoder with torch.jit.save")
        try:
            net = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:  # noqa: BLE001 - torch raises several types for archives that are not TorchScript
            raise DiffauditError(f"--embedding {path} is not a TorchScript file ({type(err).__name__}); save the "
                                 "encoder with torch.jit.save") from None
        kind = "TorchScript"
    net.eval()
    probe = torch.zeros((2, channels) + (side,) * dims)
    try:
        with torch.no_grad():
            out = net(probe)
    except Exception as err:  # noqa: BLE001 - whatever the user's network raises on a wrong shape
        raise DiffauditError(f"--embedding {path} does not take {channels}-channel inputs of side {side} "
                             f"({type(err).__name__}: {' '.join(str(err).split())[:160]}); give the input size it "
                             "was made for with --embedding-size") from None
    if not isinstance(out, torch.Tensor) or out.shape[0] != 2:
        raise DiffauditError(f"--embedding {path} must return one feature tensor per image, got {type(out).__name__}")
    return net, {"kind": kind, "path": str(path), "input_side": side, "features": int(out[0].numel())}
