"""Data-parallel processes through Hugging Face accelerate.

``accelerate launch -m diffaudit train ...`` (or ``sample``, or ``audit``) starts one process per device; each
learns its rank and the world size from accelerate's :class:`~accelerate.PartialState`. Without a launcher,
or with one process, everything runs in this process on ``--device`` and accelerate is not even imported.

What runs in parallel, and why the numbers do not change:

* **Training**: every process draws the same global batch and noise from the (seed, step) streams and takes
  its own slice of it; accelerate's DistributedDataParallel averages the gradients, which is the gradient of the
  mean loss over the global batch, as in one process (up to the order of float additions).
* **Sampling**: process r makes the shards k with k % world == r. Image i depends only on (seed, i), so the
  shards are those one process would make, and no two processes write the same file.
* The other stages run in the main process while the others wait.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from .device import resolve_device
from .extras import require


@dataclass
class Processes:
    rank: int
    world: int
    device: torch.device
    state: Any = None  # accelerate.PartialState when launched with several processes

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.state is not None and self.world > 1:
            self.state.wait_for_everyone()


def launched_world() -> int:
    """The number of processes a launcher (accelerate, torchrun) started; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def processes(device: str | None = "auto") -> Processes:
    """This process's rank, the world size and its device."""
    if launched_world() > 1:
        require("accelerate", "a data-parallel launch")
        from accelerate import PartialState

        state = PartialState(cpu=device == "cpu")
        return Processes(state.process_index, state.num_processes, state.device, state)
    return Processes(0, 1, resolve_device(device))


def shutdown_processes(*, wait: bool = True) -> None:
    """Tear down the process group of a data-parallel launch, if this process joined one.

    Every rank waits for the others (``wait``; not after an error, when another rank may never arrive) and then
    destroys the group explicitly. Left to the interpreter's exit, the gloo group's threads were torn down while
    another rank was still talking to them, and a rank could abort ("terminate called without an active
    exception")."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return
    if wait:
        torch.distributed.barrier()
    torch.distributed.destroy_process_group()
