"""Models trained elsewhere: the export, a diffusers model trained by examples/train_diffusers.py and audited end to
end with --model, a latent model, a MONAI model, provenance, the shift-tolerant reference detector and bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DModel
from test_audit import TINY
from test_robustness import refused, run

from diffaudit.adversary.detectors import NearestNeighbourDetector
from diffaudit.adversary.examples import jittered_copies
from diffaudit.audit.report.render import model_of
from diffaudit.cli import main
from diffaudit.config import SampleConfig, TPrimeConfig, to_dict
from diffaudit.data.prepare import build_training_set, load_manifest
from diffaudit.diffusion.rng import ImageNoise
from diffaudit.errors import DiffauditError
from diffaudit.io import read_json
from diffaudit.models.load import load_model

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_diffusers.py"


def tiny_unet(channels: int = 1, size: int = 28, **kw) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(8, 16),
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, **kw).eval()


def save_pipeline(folder: Path, unet, scheduler, **components) -> Path:
    unet.save_pretrained(folder / "unet")
    scheduler.save_pretrained(folder / "scheduler")
    index = {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
             "scheduler": ["diffusers", type(scheduler).__name__]}
    for name, module in components.items():
        module.save_pretrained(folder / name)
        index[name] = ["diffusers", type(module).__name__]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, data_root) -> Path:
    rd = tmp_path_factory.mktemp("external") / "run"
    assert main(["prepare", "--run-dir", str(rd), "--n-train", "8", "--data-root", str(data_root)]) == 0
    return rd


def test_export_writes_both_formats_with_digests_and_hides_x_p(prepared, data_root, tmp_path, capsys):
    code, err = run(capsys, "export", "--run-dir", prepared, "--out", tmp_path / "png", "--data-root", data_root)
    assert code == 0, err
    record = read_json(tmp_path / "png" / "export.json")
    rows = [json.loads(line) for line in (tmp_path / "png" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and set(rows[0]) == {"file_name", "label"}  # nothing says which image is x_p
    assert set(record["files"]) == {r["file_name"] for r in rows} | {"metadata.jsonl"}
    assert record["manifest_digest"] == load_manifest(prepared)["digest"]
    from PIL import Image

    images = build_training_set(load_manifest(prepared), data_root=data_root)
    first = np.asarray(Image.open(tmp_path / "png" / rows[0]["file_name"]))
    assert np.array_equal(first, images[0, 0])
    code, err = run(capsys, "export", "--run-dir", prepared, "--format", "npz", "--channels", 3, "--size", 32,
                    "--out", tmp_path / "npz", "--data-root", data_root)
    assert code == 0, err
    with np.load(tmp_path / "npz" / "train.npz") as f:
        assert f["train_images"].shape == (8, 32, 32, 3) and f["train_labels"].shape == (8, 1)
    assert read_json(tmp_path / "npz" / "export.json")["resize"] == "PIL bicubic"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    refused(capsys, "export", "--run-dir", prepared, "--out", tmp_path / "full", "--data-root", data_root,
            match="not empty")
    refused(capsys, "export", "--run-dir", prepared, "--size", 16, "--data-root", data_root, match="below the images")


def test_a_diffusers_model_trained_by_the_example_is_audited_end_to_end(tmp_path, data_root, capsys):
    rd = tmp_path / "run"
    assert main(["prepare", "--run-dir", str(rd), "--n-train", "8", "--data-root", str(data_root)]) == 0
    assert main(["export", "--run-dir", str(rd), "--out", str(tmp_path / "data"), "--data-root", str(data_root)]) == 0
    done = subprocess.run([sys.executable, str(EXAMPLE), "--data", str(tmp_path / "data"), "--out",
                           str(tmp_path / "model"), "--steps", "60", "--batch-size", "8", "--channels", "8,16",
                           "--device", "cpu"], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "model" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    cfg = dataclasses.replace(TINY, sample=SampleConfig(n=16, steps=10, batch_size=16, shard_size=16),
                              tprime=TPrimeConfig(M=2, resolution=0.5, steps=10))
    (tmp_path / "audit.json").write_text(json.dumps(to_dict(cfg)))
    code, err = run(capsys, "audit", "--run-dir", rd, "--config", tmp_path / "audit.json", "--model", tmp_path / "model",
                    "--sampling-steps", 20, "--quiet", "--data-root", data_root)
    assert code == 0, err
    results = read_json(rd / "results.json")
    digest = read_json(rd / "train" / "external.json")["digest"]
    for section in ("reproduction", "t_prime", "nll_bpd", "fid"):
        assert results[section]["model"]["digest"] == digest, section
    assert results["t_prime"]["sampler"] == "ddpm" and results["t_prime"]["steps"] == 20
    assert "VP SDE interpolating" in results["nll_bpd"]["computed"]
    assert model_of(results)["training_data_confirmed"] is True
    assert "Model audited" in (rd / "report.md").read_text()
    # another model in the same run directory is refused
    other = save_pipeline(tmp_path / "other", tiny_unet(), DDPMScheduler())
    refused(capsys, "sample", "--run-dir", rd, "--model", other, "--data-root", data_root, match="audits model")


def test_a_latent_model_samples_counts_and_searches_t_prime(prepared, data_root, tmp_path, capsys):
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=1, out_channels=1, latent_channels=2, block_out_channels=(8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, sample_size=28).eval()
    folder = save_pipeline(tmp_path / "ldm", tiny_unet(channels=2, size=14), DDIMScheduler(), vae=vae)
    rd = tmp_path / "run"
    assert main(["prepare", "--run-dir", str(rd), "--n-train", "8", "--data-root", str(data_root)]) == 0
    code, err = run(capsys, "sample", "--run-dir", rd, "--model", folder, "--n", 6, "--steps", 5, "--quiet",
                    "--data-root", data_root)
    assert code == 0, err
    shards = list((rd / "samples" / "ddim5-seed0").glob("shard_*.npz"))
    with np.load(shards[0]) as f:
        assert f["images"].shape == (6, 1, 28, 28) and f["images"].dtype == np.uint8
    assert run(capsys, "count", "--run-dir", rd, "--detector", "nn", "--quiet", "--data-root", data_root)[0] == 0
    code, err = run(capsys, "tprime", "--run-dir", rd, "--detector", "nn", "--M", 2, "--resolution", 0.5, "--steps", 5,
                    "--quiet", "--data-root", data_root)
    assert code == 0, err
    assert read_json(rd / "results.json")["t_prime"]["model"]["format"].startswith("diffusers-latent")
    code, err = run(capsys, "nll", "--run-dir", rd, "--quiet", "--data-root", data_root)
    assert code == 0 and "latent model" in err


def test_a_monai_model_samples_like_monai_itself(tmp_path):
    pytest.importorskip("monai", reason="MONAI is an optional extra (pip install 'diffaudit[monai]')")
    pytest.importorskip("einops", reason="MONAI's DiffusionModelUNet needs einops (pip install 'diffaudit[monai]')")
    from monai.networks.nets import DiffusionModelUNet
    from monai.networks.schedulers import DDIMScheduler as MonaiDDIM
    from safetensors.torch import save_file

    args = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": [8, 8], "attention_levels": [False, False],
            "num_res_blocks": 1, "norm_num_groups": 4, "num_head_channels": 8}
    torch.manual_seed(0)
    net = DiffusionModelUNet(**args).eval()
    save_file(net.state_dict(), str(tmp_path / "model.safetensors"))
    spec = {"format": "diffaudit-monai/1", "network": {"class": "DiffusionModelUNet", "args": args},
            "scheduler": {"class": "DDIMScheduler", "args": {"num_train_timesteps": 1000}},
            "weights": "model.safetensors"}
    (tmp_path / "monai.json").write_text(json.dumps(spec))
    model = load_model(tmp_path, image_shape=(1, 8, 8), device="cpu")
    ours = model.run(indices=range(2), seed=3, sampler="ddim", steps=10)
    monai = MonaiDDIM(num_train_timesteps=1000)
    monai.set_timesteps(10)
    x = ImageNoise(seed=3, indices=range(2), shape=(1, 8, 8))()
    with torch.no_grad():
        for t in monai.timesteps:
            x, _ = monai.step(net(x, torch.full((2,), int(t))), int(t), x)
    assert torch.abs(ours - x).max() < 1e-5


def test_the_weight_digest_changes_with_one_weight(tmp_path):
    folder = save_pipeline(tmp_path / "a", tiny_unet(), DDPMScheduler())
    first = load_model(folder, image_shape=(1, 28, 28), device="cpu").model_id
    unet = tiny_unet()
    with torch.no_grad():
        next(unet.parameters()).view(-1)[0] += 1e-3
    changed = load_model(save_pipeline(tmp_path / "b", unet, DDPMScheduler()), image_shape=(1, 28, 28),
                         device="cpu").model_id
    v_model = load_model(folder, image_shape=(1, 28, 28), prediction_type="v_prediction", device="cpu").model_id
    assert len({first, changed, v_model}) == 3


def test_a_report_refuses_numbers_of_two_models():
    results = {"reproduction": {"model": {"digest": "aaaa"}}, "t_prime": {"model": {"digest": "bbbb", "format": "x"}}}
    with pytest.raises(DiffauditError, match="mixes models"):
        model_of(results)
    results["t_prime"]["model"]["digest"] = "aaaa"
    assert model_of(results)["format"] == "x"


class Payload:
    def __reduce__(self):
        return (os.system, ("touch payload-ran",))


def test_bad_models_are_refused_in_one_line(prepared, data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ("--run-dir", prepared, "--data-root", data_root, "--n", 2)
    (tmp_path / "empty").mkdir()
    refused(capsys, "sample", *common, "--model", tmp_path / "empty", match="holds no model")
    refused(capsys, "sample", *common, "--model", tmp_path / "missing", match="no model at")
    folder = save_pipeline(tmp_path / "pndm", tiny_unet(), DDPMScheduler())
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "_class_name": "PNDMScheduler"}))
    refused(capsys, "sample", *common, "--model", folder, match="PNDMScheduler")
    refused(capsys, "sample", *common, "--model", save_pipeline(tmp_path / "ok", tiny_unet(), DDPMScheduler()),
            "--prediction-type", "x0", match="invalid choice")
    refused(capsys, "sample", *common, "--model", save_pipeline(tmp_path / "rgb", tiny_unet(channels=2), DDPMScheduler()),
            match="2-channel")
    refused(capsys, "sample", *common, "--model", save_pipeline(tmp_path / "small", tiny_unet(size=16), DDPMScheduler()),
            match="16x16")
    refused(capsys, "sample", *common, "--model",
            save_pipeline(tmp_path / "classes", tiny_unet(num_class_embeds=5), DDPMScheduler()), match="5 classes")
    unet_only = tmp_path / "bare"
    tiny_unet().save_pretrained(unet_only)
    refused(capsys, "sample", *common, "--model", unet_only, match="needs its scheduler")
    # a pickled checkpoint whose unpickling would run a command: refused, and the command never runs
    pickled = tmp_path / "pickled"
    tiny_unet().save_pretrained(pickled)
    (pickled / "diffusion_pytorch_model.safetensors").unlink()
    with open(pickled / "diffusion_pytorch_model.bin", "wb") as fh:
        pickle.dump({"weight": Payload()}, fh)
    refused(capsys, "sample", *common, "--model", pickled, "--scheduler", "ddpm", match="without running code")
    assert not (tmp_path / "payload-ran").exists()


def test_the_reference_detector_finds_shifted_noisy_copies():
    rng = np.random.default_rng(3)
    coarse = rng.integers(30, 220, size=(16, 1, 14, 14))  # textured like ultrasound: a 1 px shift changes it a lot
    images = np.kron(coarse, np.ones((1, 1, 2, 2))).astype(np.uint8)
    det = NearestNeighbourDetector(images[0], images[1:])
    copies = jittered_copies(images[0], 200, 0.0, rng)
    assert det(copies).mean() == 1.0
    assert det(jittered_copies(images[0], 200, 0.02, rng)).mean() >= 0.95
    assert not det(images[1:]).any()
    whole = NearestNeighbourDetector(images[0], images[1:], shift=0)
    assert whole(copies).mean() < det(copies).mean()


def test_a_diffaudit_model_is_also_saved_in_diffusers_layout(tmp_path, data_root, capsys):
    rd = tmp_path / "run"
    assert main(["prepare", "--run-dir", str(rd), "--n-train", "4", "--data-root", str(data_root)]) == 0
    code, err = run(capsys, "train", "--run-dir", rd, "--steps", 2, "--batch-size", 4, "--checkpoint-every", 2,
                    "--quiet", "--data-root", data_root)
    assert code == 0, err
    unet = UNet2DModel.from_pretrained(rd / "train" / "unet").eval()
    note = read_json(rd / "train" / "unet" / "diffaudit_sde.json")
    assert note["sde"]["name"] == "subvp" and "diffaudit sample" in note["sample_with"]
    model = load_model(rd / "train" / "unet", image_shape=(1, 28, 28), device="cpu")  # read as the SDE model it is
    assert model.continuous
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([0.3, 0.7])
    with torch.no_grad():
        assert torch.allclose(model.score_fn.net(x, t * 999).sample, unet(x, t * 999).sample, atol=1e-6)
