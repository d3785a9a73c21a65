"""Checkpoints as safetensors + JSON: weights, EMA weights and optimiser state, no pickled code.

A checkpoint is a folder ``step_0001000/`` holding ``model.safetensors``, ``ema.safetensors``,
``optimizer.safetensors`` and ``state.json``; it is written to a temporary folder and renamed, so a folder
that exists is complete.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open

from ..io import atomic_dir, load_tensors, read_json, save_tensors, write_json

_STEP = re.compile(r"^step_(\d+)$")


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    sd = opt.state_dict()
    tensors = {f"{idx}.{key}": value for idx, st in sd["state"].items() for key, value in st.items()}
    return tensors, {"param_groups": json.dumps(sd["param_groups"])}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})


def save_checkpoint(folder: Path, *, step: int, model: torch.nn.Module, ema: torch.nn.Module,
                    opt: torch.optim.Optimizer, state: dict, keep: int) -> Path:
    path = folder / f"step_{step:07d}"
    with atomic_dir(path) as tmp:
        save_tensors(tmp / "model.safetensors", model.state_dict())
        save_tensors(tmp / "ema.safetensors", ema.state_dict())
        tensors, meta = optimizer_to_tensors(opt)
        save_tensors(tmp / "optimizer.safetensors", tensors, metadata=meta)
        write_json(tmp / "state.json", {"step": step, **state})
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    return path


def list_checkpoints(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def load_checkpoint(path: Path, *, model: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    state = read_json(path / "state.json")
    model.load_state_dict(load_tensors(path / "model.safetensors"))
    ema.load_state_dict(load_tensors(path / "ema.safetensors"))
    with safe_open(str(path / "optimizer.safetensors"), framework="pt") as fh:
        meta = fh.metadata()
    optimizer_from_tensors(opt, load_tensors(path / "optimizer.safetensors"), meta)
    return state


