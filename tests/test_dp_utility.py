"""The downstream classifier under DP: the private loop without noise or clipping is the non-private one, noise as
synthetic data helps no regime, the classifier's ε is Opacus' for its noise, rate and steps, and bad input is refused
in one line."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from diffaudit.audit.utility.regimes import classifier, train_regime
from diffaudit.audit.utility.stage import run_dp_utility
from diffaudit.config import DPConfig, PrepareConfig, UtilityConfig
from diffaudit.data.prepare import build_training_set, prepare_run, training_labels
from diffaudit.errors import DiffauditError
from diffaudit.generate import shard_path
from diffaudit.io import save_npz
from diffaudit.privacy.dpsgd import dp_sgd

TINY = UtilityConfig(epsilons=(1.0, None), seeds=3, steps=6, batch_size=8, physical_batch_size=64)


@pytest.fixture
def labelled(tmp_path, data_root):
    run = tmp_path / "run"
    manifest = prepare_run(run, PrepareConfig(dataset="breastmnist", n_train=64, seed=0), data_root=str(data_root),
                           log=lambda _: None, progress=False)
    return run, manifest


def _noise_samples(run, n=64, seed=0, labels=True):
    rng = np.random.default_rng(seed)
    arrays = {"images": rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8), "indices": np.arange(n)}
    if labels:
        arrays["labels"] = rng.integers(0, 2, n)
    save_npz(shard_path(run / "samples" / "noise", 0), **arrays)
    return run / "samples" / "noise"


def test_the_classifier_at_another_width_is_torchvisions_resnet10_scaled():
    """Width 64 is the extractor's network, parameter for parameter; width w has w, 2w, 4w, 8w channels at its four
    levels and still classifies a 28-px image."""
    from diffaudit.audit.quality.fid import DomainFeatures

    base = {k: v.shape for k, v in DomainFeatures(1, 2, 64).state_dict().items()}
    assert {k: v.shape for k, v in DomainFeatures(1, 2, 64, width=64).state_dict().items()} == base
    narrow = classifier(1, 2, seed=0, width=16)
    assert set(narrow.state_dict()) <= {k for k in classifier(1, 2, seed=0).state_dict()}
    assert [narrow.body.get_submodule(f"layer{i}")[0].conv1.out_channels for i in (1, 2, 3, 4)] == [16, 32, 64, 128]
    assert narrow.head(narrow(torch.zeros(3, 1, 28, 28, dtype=torch.uint8))).shape == (3, 2)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in classifier(1, 2, 0).parameters()) / 10


@pytest.mark.parametrize("extra", [0, 5])
def test_the_private_loop_without_noise_or_clipping_is_the_non_private_one(extra):
    """The same Poisson batches, split into the same physical batches, with seeded shifts per (step, chunk) and, for
    the mixed regime, public rows on the first physical batch of every step (empty steps included)."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(48, 1, 28, 28)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 2, 48))
    px, py = x[:8] * 0.5, 1 - y[:8]  # the public rows
    weights = []
    for private in (True, False):
        net = classifier(1, 2, seed=0)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)  # (Adam's g / sqrt(v) would magnify rounding on tiny g)

        def loss_of(module, idx, step, chunk):
            xs, ys = x[idx], y[idx]
            if extra and chunk == 0:
                xs, ys = torch.cat([xs, px[:extra]]), torch.cat([ys, py[:extra]])
            g = torch.Generator().manual_seed(1000 * step + chunk)
            xs = xs + 0.1 * torch.randn(xs.shape, generator=g)
            inner = getattr(module, "_module", module)
            return torch.nn.functional.cross_entropy(inner.head(module(xs)), ys), len(ys)

        dp_sgd(net, opt, n=48, batch_size=16, steps=5, sigma=0.0, seed=0, device="cpu", loss_of=loss_of,
               dp=DPConfig(noise_multiplier=1.0, max_grad_norm=1e9, physical_batch_size=7), private=private,
               progress=False, public_rows=extra > 0)
        weights.append({k: v.detach().clone() for k, v in net.state_dict().items()})
    # float32 sums in another order differ by rounding (up to about 1e-5 here); a wrong scale or a dropped public
    # row moves the weights by 1e-2
    for k in weights[0]:
        assert torch.allclose(weights[0][k], weights[1][k], atol=1e-4, rtol=1e-3), k


def test_noise_as_synthetic_data_helps_no_regime(labelled, data_root):
    run, _ = labelled
    r = run_dp_utility(run, _noise_samples(run), dataclasses.replace(TINY, epsilons=(1.0,)), data_root=str(data_root),
                       device="cpu", progress=False, log=lambda _: None)
    t = r["table"]
    lo, hi = t["synthetic"]["inf"]["auroc"]["ci95"]
    assert lo <= 0.5 <= hi, t["synthetic"]
    for regime in ("mixed_dp", "pretrained_dp"):  # not above what the real images alone give at the same ε
        assert t[regime]["1"]["auroc"]["ci95"][0] <= t["real_dp"]["1"]["auroc"]["ci95"][1], regime
    assert r["generator"]["note"] and len(r["winners"]) == 1
    assert (run / r["figure"]).is_file() and (run / r["records"]).is_file()


def test_the_classifier_epsilon_is_opacus_for_its_noise_rate_and_steps(labelled, data_root):
    from opacus.accountants import PRVAccountant, RDPAccountant

    run, manifest = labelled
    real = (build_training_set(manifest, data_root=str(data_root)), training_labels(manifest, data_root=str(data_root)))
    _, rec = train_regime("real_dp", real=real, synthetic=real, n_classes=2, cfg=TINY, epsilon=3.0, seed=0,
                          device="cpu")
    dp = rec["dp"]
    assert dp["sample_rate"] == 8 / 64 and dp["steps"] == 6
    for name, acc in (("prv", PRVAccountant()), ("rdp", RDPAccountant())):
        acc.history = [(dp["noise_multiplier"], dp["sample_rate"], dp["steps"])]
        assert dp["epsilon"][name] == pytest.approx(acc.get_epsilon(TINY.delta), rel=1e-6)
    assert dp["epsilon"]["prv"] <= 3.0 + 1e-3 and dp["epsilon_engine"] == pytest.approx(dp["epsilon"]["prv"], rel=1e-3)


@pytest.mark.parametrize("change, message", [
    ({"epsilons": (0.0,)}, "epsilons must be positive numbers or inf"),
    ({"epsilons": (-1.0, 3.0)}, "epsilons must be positive numbers or inf"),
    ({"mix_ratio": 1.5}, "mix_ratio must be in [0, 1]"),
    ({"mix_ratio": -0.1}, "mix_ratio must be in [0, 1]"),
    ({"seeds": 2}, "seeds must be"),
    ({"epsilons": (1.0, 1.0)}, "epsilons must be distinct"),
    ({"width": 0}, "width must be"),
])
def test_bad_utility_settings_are_refused(change, message):
    with pytest.raises(DiffauditError, match=message.replace("[", r"\[").replace("]", r"\]")):
        dataclasses.replace(TINY, **change)


def test_an_unconditional_model_and_too_few_images_per_class_are_refused(labelled, data_root):
    run, _ = labelled
    with pytest.raises(DiffauditError, match="carry no class labels: the DP utility regimes need a class-conditional"):
        run_dp_utility(run, _noise_samples(run, labels=False), TINY, data_root=str(data_root), device="cpu",
                       progress=False, log=lambda _: None)
    with pytest.raises(DiffauditError, match="needs at least that many real images"):
        run_dp_utility(run, _noise_samples(run), dataclasses.replace(TINY, batch_size=128), data_root=str(data_root),
                       device="cpu", progress=False, log=lambda _: None)
