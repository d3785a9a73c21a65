"""Training lowers the loss; a resumed run equals an uninterrupted one; bad checkpoints are refused."""

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL

from diffaudit.config import TrainConfig, to_dict
from diffaudit.diffusion.sde import SubVPSDE
from diffaudit.errors import DiffauditError
from diffaudit.io import load_tensors, save_tensors
from diffaudit.training.loop import EpochOrder, learning_rate, load_score_model, train


def _images(n=8, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(n, 1, 1, 1), dtype=np.uint8)
    return np.broadcast_to(base, (n, 1, 28, 28)).copy()  # flat grey images: easy to learn


class Killed(Exception):
    pass


def test_epoch_order_is_a_permutation_per_epoch():
    order = EpochOrder(10, seed=0)
    seen = torch.cat([order.batch(s, 4) for s in range(5)])  # 20 = two epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(EpochOrder(10, seed=0).batch(3, 4), order.batch(3, 4))


def test_tiny_training_run_lowers_the_loss(tmp_path):
    cfg = TrainConfig(steps=80, batch_size=8, lr=3e-3, warmup_steps=5, log_every=1, checkpoint_every=80)
    losses = []
    train(tmp_path / "t", _images(), model_cfg=TINY_MODEL, train_cfg=cfg, sde=SubVPSDE(), device="cpu",
          progress=False, callback=lambda step, loss: losses.append(loss))
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:10])
    rows = (tmp_path / "t" / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss,grad_norm,lr,seconds" and len(rows) == 81


def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    cfg = TrainConfig(steps=12, batch_size=4, lr=2e-3, warmup_steps=3, checkpoint_every=4, log_every=1)
    kw = dict(model_cfg=TINY_MODEL, train_cfg=cfg, sde=SubVPSDE(), device="cpu", progress=False)
    full = train(tmp_path / "full", _images(6), **kw)

    def kill(step, loss):
        if step == 6:
            raise Killed

    with pytest.raises(Killed):
        train(tmp_path / "cut", _images(6), callback=kill, **kw)
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    with pytest.raises(DiffauditError, match="pass --resume"):
        train(tmp_path / "cut", _images(6), **kw)
    resumed = train(tmp_path / "cut", _images(6), resume=True, **kw)
    a, b = load_tensors(full), load_tensors(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log_full = [r.split(",")[:3] for r in (tmp_path / "full" / "loss.csv").read_text().splitlines()]
    log_cut = [r.split(",")[:3] for r in (tmp_path / "cut" / "loss.csv").read_text().splitlines()]
    assert log_full == log_cut

    # extending a finished run continues exactly as a longer run would have
    longer = train(tmp_path / "long", _images(6), **{**kw, "train_cfg": TrainConfig(**{**cfg.__dict__, "steps": 16})})
    extended = train(tmp_path / "full", _images(6), resume=True,
                     **{**kw, "train_cfg": TrainConfig(**{**cfg.__dict__, "steps": 16})})
    a, b = load_tensors(longer), load_tensors(extended)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_learning_rate_schedules():
    const = TrainConfig(steps=100, lr=1e-3, warmup_steps=10)
    assert [learning_rate(const, s) for s in (0, 4, 9, 10, 99)] == pytest.approx([1e-4, 5e-4, 1e-3, 1e-3, 1e-3])
    assert "lr_schedule" not in to_dict(const)  # runs made before the option keep their config
    cos = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, lr_schedule="cosine")
    lrs = [learning_rate(cos, s) for s in range(100)]
    assert lrs[:10] == pytest.approx([learning_rate(const, s) for s in range(10)])  # the same warm-up
    assert lrs[10] == pytest.approx(1e-3) and lrs[55] == pytest.approx(5e-4)  # half way down at the middle
    assert all(b < a for a, b in zip(lrs[10:], lrs[11:])) and 0 < lrs[-1] < 1e-6
    assert to_dict(cos)["lr_schedule"] == "cosine"
    tail = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, lr_schedule="cosine", decay_steps=20)
    lrs = [learning_rate(tail, s) for s in range(100)]
    assert lrs[:81] == pytest.approx([learning_rate(const, s) for s in range(81)])  # constant until the last 20
    assert lrs[90] == pytest.approx(5e-4) and all(b < a for a, b in zip(lrs[80:], lrs[81:]))
    with pytest.raises(DiffauditError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(DiffauditError, match="decay_steps"):
        TrainConfig(steps=100, decay_steps=20)  # a decay needs the cosine schedule
    longer = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, lr_schedule="cosine", decay_steps=1000)
    assert [learning_rate(longer, s) for s in range(100)] == pytest.approx([learning_rate(cos, s) for s in range(100)])


def test_a_cosine_run_resumes_only_to_its_own_steps(tmp_path):
    cfg = TrainConfig(steps=6, batch_size=2, lr=2e-3, warmup_steps=2, checkpoint_every=2, lr_schedule="cosine")
    kw = dict(model_cfg=TINY_MODEL, sde=SubVPSDE(), device="cpu", progress=False)
    full = train(tmp_path / "full", _images(4), train_cfg=cfg, **kw)

    def kill(step, loss):
        if step == 4:
            raise Killed

    with pytest.raises(Killed):
        train(tmp_path / "cut", _images(4), train_cfg=cfg, callback=kill, **kw)
    resumed = train(tmp_path / "cut", _images(4), train_cfg=cfg, resume=True, **kw)
    a, b = load_tensors(full), load_tensors(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    longer = TrainConfig(**{**cfg.__dict__, "steps": 8})
    with pytest.raises(DiffauditError, match="cosine learning-rate schedule over 6 steps.*--steps 6"):
        train(tmp_path / "full", _images(4), train_cfg=longer, resume=True, **kw)


def test_finished_run_is_kept_and_a_different_config_refused(tmp_path):
    cfg = TrainConfig(steps=2, batch_size=2, checkpoint_every=2)
    kw = dict(model_cfg=TINY_MODEL, sde=SubVPSDE(), device="cpu", progress=False)
    path = train(tmp_path, _images(4), train_cfg=cfg, **kw)
    mtime = path.stat().st_mtime_ns
    assert train(tmp_path, _images(4), train_cfg=cfg, **kw) == path and path.stat().st_mtime_ns == mtime
    with pytest.raises(DiffauditError, match="holds a training run of another config"):
        train(tmp_path, _images(4), train_cfg=TrainConfig(steps=2, batch_size=2, lr=1e-4), **kw)


def test_nan_checkpoint_is_refused(tmp_path):
    cfg = TrainConfig(steps=1, batch_size=2, checkpoint_every=1)
    path = train(tmp_path, _images(4), model_cfg=TINY_MODEL, train_cfg=cfg, sde=SubVPSDE(), device="cpu",
                 progress=False)
    weights = load_tensors(path)
    name = next(iter(weights))
    weights[name] = weights[name].clone().fill_(float("nan"))
    save_tensors(path, weights)
    with pytest.raises(DiffauditError, match=f"NaN/Inf values in '{name}'"):
        load_score_model(tmp_path, device="cpu")


def test_bad_training_input(tmp_path):
    kw = dict(model_cfg=TINY_MODEL, sde=SubVPSDE(), device="cpu", progress=False)
    with pytest.raises(DiffauditError, match="uint8"):
        train(tmp_path, np.zeros((0, 1, 28, 28), np.uint8), train_cfg=TrainConfig(), **kw)
    with pytest.raises(DiffauditError, match="divisible"):
        train(tmp_path, np.zeros((2, 1, 30, 30), np.uint8), train_cfg=TrainConfig(steps=1), **kw)
    with pytest.raises(DiffauditError, match="lr must be a positive"):
        train(tmp_path, _images(2), train_cfg=TrainConfig(lr=0.0), **kw)
