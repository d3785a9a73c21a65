"""DP-SGD training through Opacus: accounting equals the accountants' own answers, noise multiplicity leaves
epsilon unchanged, the target epsilon is met, and bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL

from diffaudit.cli import main
from diffaudit.config import DPConfig, TrainConfig
from diffaudit.diffusion.sde import SubVPSDE
from diffaudit.errors import DiffauditError
from diffaudit.io import read_json
from diffaudit.privacy.dpsgd import (
    _check_opacus_compatible,
    check_dp_config,
    epsilons,
    train_dp,
)

IMAGES = np.random.default_rng(0).integers(0, 256, size=(16, 1, 28, 28), dtype=np.uint8)
TRAIN = TrainConfig(steps=6, batch_size=8, warmup_steps=1)


def _train(folder, dp: DPConfig, train_cfg: TrainConfig = TRAIN) -> dict:
    train_dp(folder, IMAGES, model_cfg=TINY_MODEL, train_cfg=train_cfg, dp=dp, sde=SubVPSDE(), device="cpu",
             progress=False)
    return read_json(folder / "model.json")["dp"]


def test_a_tiny_dp_run_is_accounted_as_its_accountants_would(tmp_path):
    dp = _train(tmp_path / "k1", DPConfig(noise_multiplier=1.0, physical_batch_size=4))
    assert dp["steps"] == 6 and dp["accountant_steps"] == 6 and dp["sample_rate"] == 0.5
    assert all(np.isfinite(v) and v > 0 for v in dp["epsilon"].values())
    assert dp["epsilon_engine"] == pytest.approx(dp["epsilon"]["prv"])  # the privacy engine counted the same steps
    from opacus.accountants import RDPAccountant

    rdp = RDPAccountant()
    for _ in range(6):
        rdp.step(noise_multiplier=1.0, sample_rate=0.5)
    assert dp["epsilon"]["rdp"] == pytest.approx(rdp.get_epsilon(1e-5))


def test_noise_multiplicity_leaves_epsilon_unchanged(tmp_path):
    one = _train(tmp_path / "k1", DPConfig(noise_multiplier=1.0, physical_batch_size=4))
    three = _train(tmp_path / "k3", DPConfig(noise_multiplier=1.0, physical_batch_size=4, noise_multiplicity=3))
    # what the privacy engine itself counted while training with 3 rows per image: as many noisy steps, same epsilon
    assert three["accountant_steps"] == one["accountant_steps"] == 6 and three["noise_multiplicity"] == 3
    assert three["epsilon_engine"] == pytest.approx(one["epsilon_engine"])


def test_a_target_epsilon_is_met(tmp_path):
    dp = _train(tmp_path / "eps", DPConfig(epsilon=8.0, physical_batch_size=8))
    assert 7.0 < dp["epsilon"]["prv"] <= 8.0 + 0.05


@pytest.mark.parametrize("options, match", [
    ({"epsilon": 0.0}, "epsilon must be a positive"), ({"epsilon": -1.0}, "epsilon must be a positive"),
    ({"epsilon": float("nan")}, "epsilon must be a positive"), ({"epsilon": 1.0, "delta": 0.0}, "delta"),
    ({"epsilon": 1.0, "delta": 1.0}, "delta"), ({}, "exactly one"), ({"epsilon": 1.0, "noise_multiplier": 1.0}, "exactly one"),
    ({"noise_multiplier": 1.0, "accountant": "moments"}, "accountant"),
])
def test_bad_dp_options(options, match):
    with pytest.raises(DiffauditError, match=match):  # refused when the config is built, or when it is used
        check_dp_config(DPConfig(**options), 16, 8)


def test_batchnorm_and_a_missing_attention_are_refused(tmp_path):
    with pytest.raises(DiffauditError, match="BatchNorm"):
        _check_opacus_compatible(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4)))
    with pytest.raises(DiffauditError, match="attention layers"):
        _train(tmp_path / "attn", DPConfig(noise_multiplier=1.0, finetune="attention"))


def test_cli_bound_and_dp_training(tmp_path, data_root, capsys):
    assert main(["bound", "--kappa", "0.01", "--mu", "1", "--epsilon", "1", "--delta", "1e-5"]) == 0
    out = capsys.readouterr().out
    assert "mu-GDP (mu = 1): reconstruction success <= 0.09236" in out and "(1, 1e-05)-DP" in out
    assert main(["bound", "--kappa", "0.01"]) == 2
    assert main(["bound", "--kappa", "0.01", "--sample-rate", "0.1"]) == 2
    run = tmp_path / "run"
    assert main(["prepare", "--run-dir", str(run), "--n-train", "8", "--data-root", str(data_root)]) == 0
    assert main(["train", "--run-dir", str(run), "--steps", "3", "--batch-size", "4", "--dp-noise-multiplier", "1.5",
                 "--device", "cpu", "--quiet", "--data-root", str(data_root)]) == 0
    err = capsys.readouterr().err
    assert "epsilon at delta = 1e-05:" in err and "prv" in err and "rdp" in err
    assert main(["train", "--run-dir", str(tmp_path / "r2"), "--dp-noise-multiplicity", "2"]) == 2


def test_noise_multiplicity_clips_one_gradient_per_image_of_its_averaged_loss():
    import copy

    from opacus import GradSampleModule

    from diffaudit.privacy.dpsgd import average_draws

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    reference = copy.deepcopy(net)
    b, k = 4, 3
    rows = torch.randn(b * k, 5)  # the k draws of image i are rows i*k ... i*k+k-1
    wrapped = GradSampleModule(net, loss_reduction="mean")
    wrapped(rows).pow(2).mean().backward()
    average_draws(wrapped, b, k)
    params = [p for p in net.parameters()]
    for i in range(b):  # each image's gradient is that of its own loss averaged over its k draws
        reference.zero_grad()
        reference(rows[i * k:(i + 1) * k]).pow(2).mean().backward()
        for p, r in zip(params, reference.parameters(), strict=True):
            assert p.grad_sample.shape[0] == b
            assert torch.allclose(p.grad_sample[i], r.grad, atol=1e-6)


def test_the_audit_section_sets_the_formal_bound_beside_the_measured_rate():
    from diffaudit.audit.report.privacy import privacy_section
    from diffaudit.audit.count.stats import reproduction_test

    fpr = {"heldout_real": {"q": {"positives": 0, "n": 156, "rate": 0.0}}}
    rep = {**reproduction_test(3, 256, 16), "false_positive_rate": fpr}
    dp = {"epsilon": epsilons(1.0, 0.5, 6, 1e-5), "delta": 1e-5, "noise_multiplier": 1.0, "sample_rate": 0.5, "steps": 6}
    s = privacy_section(dp, rep)
    assert s["kappa"] == pytest.approx(1 - 0.05 ** (1 / 156))  # one-sided 95% upper limit at 0 of 156
    assert s["kappa"] < s["bound_dpsgd"] <= 1 and s["bound_dpsgd"] <= s["bound_eps_delta"]["prv"] + 1e-9
    assert s["empirical_rate_ci95"] == rep["rate_ci95"]
    with pytest.raises(DiffauditError, match="false-positive"):
        privacy_section(dp, {**rep, "false_positive_rate": {}})


def test_attention_only_fine_tuning_changes_only_attention_weights(tmp_path):
    import dataclasses

    from diffaudit.diffusion.sde import SubVPSDE
    from diffaudit.io import load_tensors
    from diffaudit.training.loop import train

    model = dataclasses.replace(TINY_MODEL, attention_levels=(False, True, False))
    train(tmp_path / "public", IMAGES, model_cfg=model, train_cfg=TrainConfig(steps=2, batch_size=8), sde=SubVPSDE(),
          device="cpu", progress=False)
    train_dp(tmp_path / "private", IMAGES, model_cfg=model, train_cfg=TRAIN, sde=SubVPSDE(), device="cpu", progress=False,
             dp=DPConfig(noise_multiplier=1.0, physical_batch_size=8, finetune="attention", pretrained=str(tmp_path / "public")))
    before = load_tensors(tmp_path / "public" / "model.safetensors")
    after = load_tensors(tmp_path / "private" / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".attentions." in f".{k}" for k in changed)
    assert read_json(tmp_path / "private" / "model.json")["dp"]["trainable_params"] < sum(v.numel() for v in before.values())


def test_dp_and_non_private_training_share_one_path(tmp_path):
    """Same seed, same initial weights; the DP run writes loss.csv and says which settings do not apply to it."""
    from diffaudit.io import load_tensors
    from diffaudit.training.loop import train

    still = TrainConfig(steps=1, batch_size=8, lr=1e-12, warmup_steps=1, log_every=1)  # one step that moves nothing
    train(tmp_path / "plain", IMAGES, model_cfg=TINY_MODEL, train_cfg=still, sde=SubVPSDE(), device="cpu",
          progress=False)
    _train(tmp_path / "dp", DPConfig(noise_multiplier=1.0, physical_batch_size=4), still)
    plain, dp = (load_tensors(tmp_path / d / "model.safetensors") for d in ("plain", "dp"))
    assert plain.keys() == dp.keys()
    assert max(float((plain[k] - dp[k]).abs().max()) for k in plain) < 1e-6
    rows = (tmp_path / "dp" / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss,grad_norm,lr,seconds" and rows[1].startswith("1,")
    record = read_json(tmp_path / "dp" / "model.json")
    assert set(record["dp_not_applied"]) == {"train.grad_clip", "train.checkpoint_every", "train.keep_checkpoints"}
