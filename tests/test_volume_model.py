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
    assert auto_patch((32, 32, 32)) == 4 and auto_patch((16, 16, 16)) == 2 and auto_patch((8, 8, 8)) == 1


def test_a_volume_the_network_cannot_halve_is_refused_naming_a_size_that_works():
    cfg = ModelConfig(patch="auto")
    check_shape(cfg, (32, 32, 32))
    with pytest.raises(DiffauditError, match=r"needs every side divisible by 16, got 32x32x24; prepare the volumes at "
                                             r"--size 32,32,32"):
        check_shape(cfg, (32, 32, 24))  # patch 4 (the largest side) and three levels: multiples of 16


def test_a_3d_model_trains_reloads_and_its_monai_layout_loads_with_monai_alone(tmp_path):
    from monai.networks.nets import DiffusionModelUNet
    from safetensors.torch import load_file

    from diffaudit.io import read_json

    volumes = _volumes(3, side=16)
    cfg = ModelConfig(prediction="v", patch="auto")
    train(tmp_path, volumes, model_cfg=cfg, train_cfg=TrainConfig(steps=3, batch_size=3, checkpoint_every=100),
          sde=SubVPSDE(), progress=False)
    model, meta = load_score_model(tmp_path, device="cpu")
    assert meta["image_shape"] == [1, 16, 16, 16] and meta["model"]["patch"] == 2
    x, t = torch.randn(2, 1, 16, 16, 16), torch.tensor([0.3, 0.7])
    score = model(x, t)
    assert score.shape == x.shape and torch.isfinite(score).all()

    spec = read_json(tmp_path / "monai" / "monai.json")
    assert spec["network"]["args"]["spatial_dims"] == 3 and spec["patch"] == 2 and spec["sde"]["name"] == "subvp"
    net = DiffusionModelUNet(**spec["network"]["args"])
    net.load_state_dict(load_file(tmp_path / "monai" / "model.safetensors"))
    own = build_unet3d(ModelConfig(**{**meta["model"], "block_out_channels": tuple(meta["model"]["block_out_channels"]),
                                      "attention_levels": tuple(meta["model"]["attention_levels"])}),
                       channels=1, shape=(16, 16, 16))
    own.net.load_state_dict(net.state_dict())
    with torch.no_grad():
        direct = shuffle(net(unshuffle(x, 2), t * 999), 2)  # as monai.json's "input" describes
        torch.testing.assert_close(own(x, t * 999), direct)
