"""The device a command runs on: ``--device auto`` takes a CUDA GPU when one is visible, else the CPU."""

from __future__ import annotations

import torch

from .errors import DiffauditError


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise DiffauditError(f"unknown device '{device}'; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DiffauditError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return dev
