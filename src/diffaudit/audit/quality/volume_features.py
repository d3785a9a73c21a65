"""The feature extractor of the Fréchet distance for volumes, where no pretrained 3D network can be had offline.

Medical 3D generative models are usually scored with Med3D or MedicalNet features; neither can be downloaded here,
and IXI-like volumes carry no class label for the 2D domain extractor's recipe. The extractor is therefore trained on
the run's own training split with a label-free task, **orientation prediction** (Gidaris et al. 2018's rotation
pretext in 3D): each volume is shown in one of 8 orientations (0, 90, 180 or 270 degrees about the inferior-superior
axis, upright or upside down) and the network names which. Volumes are stored RAS+, so the task needs the anatomy:
where the face, the cerebellum and the vertex lie. The network is MONAI's 3D ResNet10 (widths 16-128, as the 3D
classifiers), its ``features``-d bottleneck (64) the feature; it trains once per (data, seed, config),
deterministically, and is saved as safetensors + JSON. The distance is the same Fréchet distance, with the same
bootstrap intervals and reliability flag, as in 2D; its values are in this network's units and compare only with
each other (FID_train against FID_test of one run, or runs of one data and extractor).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ...adversary.classifiers import volume_resnet
from ...config import ExtractorConfig, to_dict
from ...io import check_state_dict, existing_artefact, load_tensors, read_json, save_tensors, write_json
from ...rng import derive_seed
from .fid import BottleneckFeatures

ORIENTATIONS = 8  # 4 turns about the I-S axis x upright / upside down
SEED_OFFSET = 31  # the stream of this extractor's seeds (derive_seed(cfg.seed, SEED_OFFSET, ...))


def orient(volumes: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Each volume [B, C, D, H, W] (RAS+: D = x, H = y, W = z) in orientation ``k[b]`` in 0..7: turned by 90 degrees
    (k mod 4) times in the x-y (axial) plane, then upside down (turned 180 degrees about x) when k >= 4."""
    out = []
    for v, kk in zip(volumes, k.tolist(), strict=True):
        v = torch.rot90(v, kk % 4, dims=(1, 2))
        out.append(torch.rot90(v, 2, dims=(2, 3)) if kk >= 4 else v)
    return torch.stack(out)


class VolumeFeatures(BottleneckFeatures):
    """uint8 volumes [B, C, D, H, W] -> the ``features``-d bottleneck of a 3D ResNet10 orientation classifier (the
    3D classifiers' network, :func:`~diffaudit.adversary.classifiers.volume_resnet`)."""

    def __init__(self, channels: int, features: int = 64) -> None:
        super().__init__(features)
        self.body = volume_resnet("resnet10", channels, features)
        self.head = nn.Linear(features, ORIENTATIONS)


def train_volume_extractor(folder: str | Path, volumes: np.ndarray, *, name: str, val: np.ndarray | None = None,
                           cfg: ExtractorConfig | None = None, device: torch.device | str = "cpu",
                           progress: bool = True) -> VolumeFeatures:
    """Train (or load, when ``folder`` holds one of the same config and data) the orientation extractor on uint8
    ``volumes`` [N, C, D, H, W]; ``val`` volumes give its held-out orientation accuracy (model.json ``metrics``)."""
    folder = Path(folder)
    cfg = cfg or ExtractorConfig()
    record = {"name": name, "task": "orientation (8 classes)", "config": to_dict(cfg),
              "image_shape": list(volumes.shape[1:]), "data": hashlib.sha256(volumes.tobytes()).hexdigest()[:16]}
    if existing_artefact(folder / "model.json", record, what="a feature extractor",
                         fix="remove it or use another folder") is not None:
        return load_volume_extractor(folder, device=device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, SEED_OFFSET, 0))
        net = VolumeFeatures(volumes.shape[1], cfg.features)
    net = net.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x_all = torch.from_numpy(np.ascontiguousarray(volumes))
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, SEED_OFFSET, 1))
    net.train()
    for _ in tqdm(range(cfg.steps), disable=not progress, desc=f"volume features ({name})", unit="step",
                  dynamic_ncols=True):
        idx = torch.randint(len(x_all), (min(cfg.batch_size, 4 * len(x_all)),), generator=g)
        k = torch.randint(ORIENTATIONS, (len(idx),), generator=g)
        x = orient(x_all[idx].float() / 127.5 - 1.0, k).to(device)
        loss = nn.functional.cross_entropy(net.head(net.embed(x)), k.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    metrics = {} if val is None or not len(val) else {"val_orientation_accuracy": orientation_accuracy(net, val, device),
                                                      "val_n": int(len(val)) * ORIENTATIONS, "chance": 1 / ORIENTATIONS}
    save_tensors(folder / "model.safetensors", net.state_dict())
    write_json(folder / "model.json", {**record, "metrics": metrics})
    return net


@torch.no_grad()
def orientation_accuracy(net: VolumeFeatures, volumes: np.ndarray, device: torch.device | str) -> float:
    """The share of (volume, orientation) pairs, every volume in all 8 orientations, whose orientation it names."""
    right = 0
    for v in volumes:
        x = torch.from_numpy(np.ascontiguousarray(v))[None].repeat(ORIENTATIONS, 1, 1, 1, 1).float() / 127.5 - 1.0
        k = torch.arange(ORIENTATIONS)
        right += int((net.head(net.embed(orient(x, k).to(device))).argmax(1).cpu() == k).sum())
    return right / (len(volumes) * ORIENTATIONS)


def load_volume_extractor(folder: str | Path, *, device: torch.device | str = "cpu") -> VolumeFeatures:
    folder = Path(folder)
    meta = read_json(folder / "model.json")
    net = VolumeFeatures(meta["image_shape"][0], meta["config"]["features"])
    weights = load_tensors(folder / "model.safetensors")
    check_state_dict(net, weights, folder / "model.safetensors")
    net.load_state_dict(weights)
    return net.to(device).eval()
