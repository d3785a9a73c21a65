"""Score models of volumes: the exact 3D memoriser (its samples are training volumes, each volume independent of the
batch), and diffaudit's own 3D network (MONAI's DiffusionModelUNet with spatial_dims=3 under the sub-VP SDE), trained,
reloaded, and readable by MONAI alone."""

import numpy as np
import pytest
import torch

pytest.importorskip("monai")

from diffaudit.config import ModelConfig, TrainConfig  # noqa: E402
from diffaudit.diffusion.generative import ContinuousModel  # noqa: E402
from diffaudit.diffusion.score import memoriser_score  # noqa: E402
from diffaudit.diffusion.sde import SubVPSDE  # noqa: E402
from diffaudit.diffusion.unet3d import auto_patch, build_unet3d, check_shape, shuffle, unshuffle  # noqa: E402
from diffaudit.errors import DiffauditError  # noqa: E402
from diffaudit.images import to_model_space  # noqa: E402
from diffaudit.training.loop import load_score_model, train  # noqa: E402


def _volumes(k: int, side: int = 8, seed: int = 0) -> np.ndarray:
    """K distinct uint8 volumes [K, 1, side, side, side]: smooth blobs at random places."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).astype(np.float64)
    out = []
    for _ in range(k):
        centre = rng.uniform(1, side - 2, 3)
        out.append(255 * np.exp(-((grid - centre) ** 2).sum(-1) / (2 * rng.uniform(1.0, 2.5) ** 2)))
    return np.rint(np.stack(out)[:, None]).astype(np.uint8)


def test_the_exact_3d_memoriser_samples_training_volumes_each_independent_of_the_batch():
    sde = SubVPSDE()
    train_set = _volumes(4)
    model = ContinuousModel(memoriser_score(sde, torch.from_numpy(to_model_space(train_set))), sde,
                            image_shape=train_set.shape[1:])
    samples = model.generate(indices=range(8), seed=5, sampler="em", steps=200)
    assert samples.shape == (8, 1, 8, 8, 8) and samples.dtype == np.uint8
    rmse = np.sqrt(((samples[:, None].astype(float) - train_set[None].astype(float)) ** 2).mean(axis=(2, 3, 4, 5))) / 255
    assert (rmse.min(1) < 0.03).all()  # every sample lands on a training volume
    assert len(set(rmse.argmin(1))) >= 2  # and not always on the same one
    alone = model.generate(indices=[6], seed=5, sampler="em", steps=200)
    np.testing.assert_array_equal(alone[0], samples[6])  # volume 6 is the same drawn alone or in a batch of 8


def test_the_3d_patches_are_an_exact_rearrangement():
    x = torch.randn(2, 1, 8, 12, 16)
    y = unshuffle(x, 4)
    assert y.shape == (2, 64, 2, 3, 4)
    assert torch.equal(y[0, :, 1, 2, 3].reshape(4, 4, 4), x[0, 0, 4:8, 8:12, 12:16])  # one patch, as channels
    assert torch.equal(shuffle(y, 4), x)
    assert auto_patch((32, 32, 32)) == 2 and auto_patch((16, 16, 16)) == 1 and auto_patch((64,) * 3, width=64) == 4


def test_a_volume_the_network_cannot_halve_is_refused_naming_a_size_that_works():
    cfg = ModelConfig(patch="auto")
    check_shape(cfg, (32, 32, 32))
    with pytest.raises(DiffauditError, match=r"needs every side divisible by 8, got 32x32x26; prepare the volumes at "
                                             r"--size 32,32,24"):
        check_shape(cfg, (32, 32, 26))  # patch 2 (the largest side) and three levels: multiples of 8


def test_a_3d_model_trains_reloads_and_its_monai_layout_loads_with_monai_alone(tmp_path):
    from monai.networks.nets import DiffusionModelUNet
    from safetensors.torch import load_file

    from diffaudit.io import read_json

    volumes = _volumes(3, side=32)
    cfg = ModelConfig(prediction="v", patch="auto")
    train(tmp_path, volumes, model_cfg=cfg, train_cfg=TrainConfig(steps=3, batch_size=3, checkpoint_every=100),
          sde=SubVPSDE(), progress=False)
    model, meta = load_score_model(tmp_path, device="cpu")
    assert meta["image_shape"] == [1, 32, 32, 32] and meta["model"]["patch"] == 2
    x, t = torch.randn(2, 1, 32, 32, 32), torch.tensor([0.3, 0.7])
    score = model(x, t)
    assert score.shape == x.shape and torch.isfinite(score).all()

    spec = read_json(tmp_path / "monai" / "monai.json")
    assert spec["network"]["args"]["spatial_dims"] == 3 and spec["patch"] == 2 and spec["sde"]["name"] == "subvp"
    net = DiffusionModelUNet(**spec["network"]["args"])
    net.load_state_dict(load_file(tmp_path / "monai" / "model.safetensors"))
    own = build_unet3d(ModelConfig(**{**meta["model"], "block_out_channels": tuple(meta["model"]["block_out_channels"]),
                                      "attention_levels": tuple(meta["model"]["attention_levels"])}),
                       channels=1, shape=(32, 32, 32))
    own.net.load_state_dict(net.state_dict())
    with torch.no_grad():
        direct = shuffle(net(unshuffle(x, 2), t * 999), 2)  # as monai.json's "input" describes
        torch.testing.assert_close(own(x, t * 999), direct)


def test_a_3d_model_trains_with_dp_sgd(tmp_path):
    pytest.importorskip("opacus")
    from diffaudit.config import DPConfig
    from diffaudit.privacy.dpsgd import train_dp

    train_dp(tmp_path, _volumes(6), model_cfg=ModelConfig(prediction="v", patch="auto"), sde=SubVPSDE(),
             train_cfg=TrainConfig(steps=2, batch_size=3, checkpoint_every=100), dp=DPConfig(noise_multiplier=1.0),
             progress=False)
    model, meta = load_score_model(tmp_path, device="cpu")
    assert meta["image_shape"] == [1, 8, 8, 8] and meta["dp"]["noise_multiplier"] == 1.0
    assert 0 < meta["dp"]["epsilon"][meta["dp"]["accountant"]] < float("inf")
    assert torch.isfinite(model(torch.randn(1, 1, 8, 8, 8), torch.tensor([0.5]))).all()


def test_the_volume_fid_extractor_learns_orientations_and_reloads(tmp_path):
    from diffaudit.audit.quality.fid import Frechet
    from diffaudit.audit.quality.volume_features import ORIENTATIONS, load_volume_extractor, orient, train_volume_extractor
    from diffaudit.config import ExtractorConfig

    volumes = _volumes(6, side=12)
    x = torch.from_numpy(volumes[:1]).float().repeat(ORIENTATIONS, 1, 1, 1, 1)
    turned = orient(x, torch.arange(ORIENTATIONS))
    assert torch.equal(turned[0], x[0])  # orientation 0 is the volume as stored
    assert len({tuple(v.flatten().tolist()) for v in turned}) == ORIENTATIONS  # eight distinct views
    net = train_volume_extractor(tmp_path, volumes, name="toy", val=volumes[:2],
                                 cfg=ExtractorConfig(steps=3, batch_size=8), progress=False)
    again = load_volume_extractor(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(net(torch.from_numpy(volumes)), again(torch.from_numpy(volumes)))
    assert 0 <= read_meta(tmp_path)["metrics"]["val_orientation_accuracy"] <= 1
    out = Frechet(again).distances(iter([volumes[:3]]), {"train": volumes[3:]})
    assert out["train"]["value"] >= 0


def read_meta(folder):
    from diffaudit.io import read_json

    return read_json(folder / "model.json")


def test_a_monai_3d_model_samples_volumes_like_monai_itself(tmp_path):
    pytest.importorskip("einops")
    import json

    from monai.networks.nets import DiffusionModelUNet
    from monai.networks.schedulers import DDIMScheduler as MonaiDDIM
    from safetensors.torch import save_file

    from diffaudit.diffusion.rng import ImageNoise
    from diffaudit.models.load import load_model

    args = {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "channels": [8, 8], "attention_levels": [False, False],
            "num_res_blocks": 1, "norm_num_groups": 4, "num_head_channels": 8}
    torch.manual_seed(0)
    net = DiffusionModelUNet(**args).eval()
    save_file(net.state_dict(), str(tmp_path / "model.safetensors"))
    (tmp_path / "monai.json").write_text(json.dumps({
        "format": "diffaudit-monai/1", "network": {"class": "DiffusionModelUNet", "args": args},
        "scheduler": {"class": "DDIMScheduler", "args": {"num_train_timesteps": 1000}}, "weights": "model.safetensors"}))
    model = load_model(tmp_path, image_shape=(1, 8, 8, 8), device="cpu")
    ours = model.run(indices=range(2), seed=3, sampler="ddim", steps=10)
    monai = MonaiDDIM(num_train_timesteps=1000)
    monai.set_timesteps(10)
    x = ImageNoise(seed=3, indices=range(2), shape=(1, 8, 8, 8))()
    with torch.no_grad():
        for t in monai.timesteps:
            x, _ = monai.step(net(x, torch.full((2,), int(t))), int(t), x)
    assert ours.shape == (2, 1, 8, 8, 8) and torch.abs(ours - x).max() < 1e-5
    volumes = model.generate(indices=[0, 1], seed=3, sampler="ddim", steps=10)
    assert volumes.shape == (2, 1, 8, 8, 8) and volumes.dtype == np.uint8
    with pytest.raises(DiffauditError, match="a 3D network .* but the run's are 2D images"):
        load_model(tmp_path, image_shape=(1, 8, 8), device="cpu")


def test_the_3d_memoriser_s_q_m_core_shrinks_from_4_to_64_volumes():
    from diffaudit.adversary.detectors import NearestNeighbourDetector
    from diffaudit.audit.tprime.search import QM, make_grid, search

    sde = SubVPSDE()
    grid = make_grid(0.1)
    core = {}
    for k in (4, 64):
        volumes = _volumes(k, seed=1)
        score = memoriser_score(sde, torch.from_numpy(to_model_space(volumes)))
        q_m = QM(ContinuousModel(score, sde, image_shape=volumes.shape[1:]), volumes[0],
                 {"nn": NearestNeighbourDetector(volumes[0], volumes[1:])}, m=8, steps=50)
        s = search(q_m, grid, method="exhaustive", p0=1 / k)
        if k == 4:
            assert s.evaluations[grid[0]].q == 1.0  # a volume barely diffused comes back as itself
        core[k] = next((i for i, t in enumerate(s.grid) if s.evaluations[t].positives == 0), len(s.grid))
    assert core[64] < core[4], core
