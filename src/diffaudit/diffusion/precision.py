"""The numerics a sampler runs in: ``precision`` (fp32, tf32, bf16) and ``compile`` (torch.compile's modes).

* ``fp32`` (the default): fp32 everywhere, TF32 off, deterministic cuDNN convolutions without autotuning. cuDNN
  otherwise picks convolution algorithms per batch shape, which made image i differ by up to 7/255 between batch
  sizes 64 and 7 on an H100.
* ``tf32``: the same, with TF32 tensor cores allowed for convolutions and matmuls (10-bit mantissa products,
  fp32 accumulation) on GPUs that have them; on a CPU it is fp32.
* ``bf16``: the network runs under ``torch.autocast`` in bfloat16 (8-bit mantissa); its output is cast back to fp32,
  and the sampler's state, noise and update stay fp32.
* ``compile``: ``torch.compile`` of the network (``default``; ``reduce-overhead`` adds CUDA graphs on a GPU;
  ``max-autotune`` searches kernels), compiled once per model and batch shape.

Within one mode, image i is still a function of (seed, i, config): the noise comes from each image's own stream and
the kernels are chosen without autotuning on batch shape (``tests/test_samplers.py`` checks batch 64 against
batch 7 on the CPU; ``benchmarks/sampling_modes.py`` measures the same on a GPU). Between modes images differ by
rounding, which can change a detector's decision on a sample near its threshold: the benchmark counts how many.
The mode is part of the sampling config, so samples of different modes never mix in one folder.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import torch

from ..config import COMPILE_MODES, PRECISIONS
from ..errors import DiffauditError


def check_mode(precision: str, compile: str = "none") -> None:
    if precision not in PRECISIONS:
        raise DiffauditError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    if compile not in COMPILE_MODES:
        raise DiffauditError(f"unknown compile mode '{compile}'; choose one of {', '.join(COMPILE_MODES)}")


@contextlib.contextmanager
def numerics(precision: str = "fp32") -> Iterator[None]:
    """fp32 (TF32 off) or tf32 matmuls and deterministic cuDNN convolutions for the block (restored after)."""
    check_mode(precision)
    tf32 = precision == "tf32"
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=tf32):
            yield
    finally:
        torch.set_float32_matmul_precision(before)


def in_precision(fn: Callable[..., torch.Tensor], precision: str) -> Callable[..., torch.Tensor]:
    """``fn`` (a network call returning a tensor) run under bf16 autocast when ``precision`` is bf16, its output cast
    back to fp32; ``fn`` itself otherwise."""
    check_mode(precision)
    if precision != "bf16":
        return fn

    def call(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = fn(x, *args, **kwargs)
        return out.float()

    return call


def compiled(model, mode: str):
    """A shallow copy of ``model`` (a :class:`~diffaudit.diffusion.generative.Generative`) whose network is
    ``torch.compile``d in ``mode``; ``model`` itself for 'none' or an analytic (non-module) network."""
    check_mode("fp32", mode)
    if mode == "none" or getattr(model, "compiled_mode", None) == mode:
        return model
    attr = "score_fn" if hasattr(model, "score_fn") else "net"
    net = getattr(model, attr)
    if not isinstance(net, torch.nn.Module):
        return model
    out = copy.copy(model)
    setattr(out, attr, torch.compile(net, mode=mode, dynamic=False))
    out.compiled_mode = mode  # compiled once: later calls (one per shard) reuse it
    return out
