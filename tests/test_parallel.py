"""Data-parallel training and sampling on 2 CPU processes (torchrun, gloo; accelerate's PartialState and
DistributedDataParallel inside): the shards do not collide and equal one process's, and the trained weights
equal one process's up to float reduction order."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from diffaudit.cli import main
from diffaudit.config import SampleConfig
from diffaudit.generate import iter_shards, sample_run
from diffaudit.io import load_tensors

pytest.importorskip("accelerate")


def _launch(*args: str, data_root) -> None:
    # torchrun sets the environment accelerate's PartialState reads (accelerate's own multi-CPU launch needs MPI);
    # --standalone lets it rendezvous on a free local port, so parallel or repeated runs never collide on one
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "diffaudit", *args]
    env = {**os.environ, "DIFFAUDIT_DATA": str(data_root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_train_and_sample_as_one(tmp_path, data_root):
    one, two = tmp_path / "one", tmp_path / "two"
    train = ["--preset", "cpu", "--steps", "12", "--batch-size", "8", "--checkpoint-every", "6", "--device", "cpu", "--quiet"]
    for run in (one, two):
        assert main(["prepare", "--run-dir", str(run), "--n-train", "8", "--data-root", str(data_root)]) == 0
    assert main(["train", "--run-dir", str(one), "--data-root", str(data_root), *train]) == 0
    _launch("train", "--run-dir", str(two), *train, data_root=data_root)
    a, b = load_tensors(one / "train" / "model.safetensors"), load_tensors(two / "train" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) > 0  # two processes really ran (reduction order differs)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4

    cfg = SampleConfig(n=40, steps=6, batch_size=8, shard_size=8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process (OMP_NUM_THREADS=1): CPU kernels round by thread count
    try:
        ref = sample_run(one, "ref", cfg, device="cpu", progress=False)
    finally:
        torch.set_num_threads(threads)
    _launch("sample", "--run-dir", str(one), "--n-samples", "40", "--steps", "6", "--batch-size", "8", "--shard-size", "8",
            "--name", "two", "--device", "cpu", "--quiet", data_root=data_root)
    got = list(iter_shards(one / "samples" / "two"))
    want = list(iter_shards(ref))
    assert len(got) == len(want) == 5 and (one / "samples" / "two" / "grid.png").exists()
    for (gi, gx), (wi, wx) in zip(got, want, strict=True):
        assert np.array_equal(gi, wi) and np.array_equal(gx, wx)
