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
* ``memory_format``: ``channels_last`` keeps the network's weights and activations NHWC (a copy of the network;
  the model given is unchanged), ``contiguous`` NCHW.

``auto`` (the default of both; :func:`resolve_numerics`) picks the fastest mode measured to keep image i a function of
(seed, i) on this kind of device. On a CPU (28 px, batch 128, 2 idle cores: fp32 eager 56.6% of the measured matmul
peak, channels_last 61.0%, compiled 68.8% after a 49 s first call) that is channels_last, compiled ("default") when
the run draws at least :data:`AUTO_COMPILE_EVALUATIONS` image x network evaluations per batch shape it compiles (its
49 s are repaid after about 205 000 at 28 px; a larger image repays them sooner). On a GPU, where neither the gain nor
the batch invariance of these modes was measured, auto is contiguous and uncompiled: ``benchmarks/sampling_modes.py``
measures both there. A samples folder records the mode it was drawn in and is continued in it (``generate``).

Within one mode, image i is still a function of (seed, i, config): the noise comes from each image's own stream and
the kernels are chosen without autotuning on batch shape (``tests/test_samplers.py`` checks batch 64 against
batch 7 on the CPU; ``benchmarks/sampling_modes.py`` measures the same on a GPU). Between modes images differ by
rounding, which can change a detector's decision on a sample near its threshold: the benchmark counts how many.
The mode is part of the sampling config, so samples of different modes never mix in one folder.
"""

from __future__ import annotations

import contextlib
import copy
import sys
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


MEMORY_FORMATS = ("contiguous", "channels_last")
#: compile="auto" compiles on a CPU when a run draws at least this many image x network evaluations per batch shape
#: (each shape is compiled once): 49 s / (1/472 - 1/532 s) = 205 000 at 28 px, rounded up
AUTO_COMPILE_EVALUATIONS = 250_000


def _network(model) -> tuple[str, object]:
    attr = "score_fn" if hasattr(model, "score_fn") else "net"
    return attr, getattr(model, attr, None)


def network_device(model) -> torch.device | None:
    """The device of ``model``'s network (a :class:`~diffaudit.diffusion.generative.Generative`), or None for an
    analytic score or a network without parameters."""
    _, net = _network(model)
    if not isinstance(net, torch.nn.Module):
        return None
    param = next(net.parameters(), None)
    return None if param is None else param.device


def compile_available() -> bool:
    """Whether torch.compile can run in this Python (its own check; a missing C++ compiler shows at the first call)."""
    try:
        import torch._dynamo

        return bool(torch._dynamo.is_dynamo_supported()) and sys.platform != "win32"
    except Exception:  # noqa: BLE001 - any failure to import means no compile
        return False


def resolve_numerics(compile: str, memory_format: str, *, model, evaluations: int, shapes: int = 1) -> tuple[str, str]:
    """The (compile mode, memory format) a run samples ``model`` in: the given ones, or for ``auto`` the rule of this
    module's docstring. ``evaluations`` is the run's images x network evaluations per image, ``shapes`` the number of
    batch shapes it draws (each one compiled once)."""
    device = network_device(model)
    cpu = device is not None and device.type == "cpu"
    if memory_format == "auto":
        memory_format = "channels_last" if cpu else "contiguous"
    if compile == "auto":
        pays = evaluations >= AUTO_COMPILE_EVALUATIONS * max(1, shapes)
        compile = "default" if cpu and pays and compile_available() else "none"
    check_mode("fp32", compile)
    if memory_format not in MEMORY_FORMATS:
        raise DiffauditError(f"unknown memory format '{memory_format}'; choose one of auto, {', '.join(MEMORY_FORMATS)}")
    return compile, memory_format


def in_memory_format(model, memory_format: str):
    """A shallow copy of ``model`` whose network is a copy in ``memory_format`` (channels_last: NHWC weights, so
    every convolution runs NHWC); ``model`` itself for contiguous, or where the network is analytic or cannot take
    the format (a 3-d convolution): then it runs as it is."""
    if memory_format == "contiguous" or getattr(model, "memory_format", "contiguous") == memory_format:
        return model
    attr, net = _network(model)
    if not isinstance(net, torch.nn.Module):
        return model
    try:
        net = copy.deepcopy(net).to(memory_format=torch.channels_last)
    except RuntimeError:  # a 5-d weight has no channels_last layout
        return model
    out = copy.copy(model)
    setattr(out, attr, net)
    out.memory_format = memory_format
    return out


def compiled(model, mode: str):
    """A shallow copy of ``model`` (a :class:`~diffaudit.diffusion.generative.Generative`) whose network is
    ``torch.compile``d in ``mode``; ``model`` itself for 'none', 'auto' (settled per samples folder by
    :func:`resolve_numerics`) or an analytic (non-module) network."""
    if mode == "auto":
        return model
    check_mode("fp32", mode)
    if mode == "none" or getattr(model, "compiled_mode", None) == mode:
        return model
    attr, net = _network(model)
    if not isinstance(net, torch.nn.Module):
        return model
    out = copy.copy(model)
    setattr(out, attr, torch.compile(net, mode=mode, dynamic=False))
    out.compiled_mode = mode  # compiled once: later calls (one per shard) reuse it
    out.uncompiled = model
    return out


def prepared(model, compile: str, memory_format: str):
    """``model`` in ``memory_format``, compiled in ``compile``: made once per model and mode and kept on ``model``,
    so that the shards of one run (a sequential count calls the sampler once per shard) reuse one compilation."""
    model = getattr(model, "uncompiled", model)  # compiled by the caller: made again from the network itself
    cache = model.__dict__.setdefault("_prepared", {})
    key = (compile, memory_format)
    if key not in cache:
        cache[key] = compiled(in_memory_format(model, memory_format), compile)
    return cache[key]
