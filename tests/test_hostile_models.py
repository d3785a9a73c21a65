"""Hostile and careless input on models trained elsewhere, on sampling and on the file system: each is refused with one
'error:' line that names the file and the fix, and a refused command leaves the run directory as it was."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors.torch import save_file
from test_external import save_pipeline, tiny_unet
from test_robustness import run

from diffaudit import cli
from diffaudit.config import SampleConfig
from diffaudit.errors import DiffauditError, ReleaseBlocked
from diffaudit.generate import generate_shards
from diffaudit.io import read_json
from diffaudit.models.load import load_model

NOT_AN_OBJECT = {"binary": b"\x89PNG\r\n\x1a\n\xff\xfe\x00", "list": b"[1, 2, 3]"}


def refused(capsys, *argv, match: str) -> str:
    """The command exits 2 with one 'error:' line, its last, that contains ``match`` (an audit may first say which
    prepared data it audits, prepare that the data file is not the official one)."""
    code, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and lines and "error:" in lines[-1] and match in lines[-1], err
    assert sum("error:" in line for line in lines) == 1 and "Traceback" not in err, err
    return lines[-1]


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, data_root) -> Path:
    rd = tmp_path_factory.mktemp("hostile") / "run"
    assert cli.main(["prepare", "--run-dir", str(rd), "--n-train", "8", "--data-root", str(data_root)]) == 0
    return rd


@pytest.fixture
def fresh(tmp_path, data_root, capsys) -> Path:
    rd = tmp_path / "run"
    assert run(capsys, "prepare", "--run-dir", rd, "--n-train", 8, "--data-root", data_root)[0] == 0
    return rd


def pipeline(folder: Path, *, unet=None, **scheduler) -> Path:
    return save_pipeline(folder, unet if unet is not None else tiny_unet(), DDPMScheduler(**scheduler))


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def monai_model(folder: Path, **spec) -> Path:
    pytest.importorskip("monai", reason="MONAI is an optional extra (pip install 'diffaudit[monai]')")
    pytest.importorskip("einops", reason="MONAI's DiffusionModelUNet needs einops")
    from monai.networks.nets import DiffusionModelUNet

    args = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "channels": [8, 8],
            "attention_levels": [False, False], "num_res_blocks": 1, "norm_num_groups": 4, "num_head_channels": 8}
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    save_file(DiffusionModelUNet(**args).state_dict(), str(folder / "model.safetensors"))
    full = {"format": "diffaudit-monai/1", "network": {"class": "DiffusionModelUNet", "args": args},
            "scheduler": {"class": "DDPMScheduler", "args": {"num_train_timesteps": 1000}},
            "weights": "model.safetensors", **spec}
    (folder / "monai.json").write_text(json.dumps(full))
    return folder


# ---- 1. configs that are not one JSON object -------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(NOT_AN_OBJECT))
def test_model_configs_that_are_not_json_objects_are_refused(prepared, data_root, tmp_path, capsys, kind):
    common = ("--run-dir", prepared, "--data-root", data_root, "--model")
    for where in ("unet/config.json", "scheduler/scheduler_config.json", "model_index.json"):
        folder = pipeline(tmp_path / where.replace("/", "-"))
        (folder / where).write_bytes(NOT_AN_OBJECT[kind])
        for command in (("sample", "--n", 2), ("tprime", "--detector", "nn"), ("nll",), ("audit", "--dry-run"),
                        ("audit",)):
            line = refused(capsys, command[0], *common, folder, *command[1:], match=str(folder / where))
            assert ("not a JSON text file" if kind == "binary" else "JSON list, not a JSON object") in line
    assert not (prepared / "train").exists()


def test_a_monai_json_that_is_not_an_object_or_whose_parts_are_not_is_refused(prepared, data_root, tmp_path, capsys):
    common = ("--run-dir", prepared, "--data-root", data_root, "--n", 2, "--model")
    network = monai_model(tmp_path / "network", network=["DiffusionModelUNet"])
    refused(capsys, "sample", *common, network, match="network must be a JSON object")
    scheduler = monai_model(tmp_path / "scheduler", scheduler="DDPMScheduler")
    refused(capsys, "sample", *common, scheduler, match="scheduler must be a JSON object")
    args = monai_model(tmp_path / "args", scheduler={"class": "DDPMScheduler", "args": [1000]})
    refused(capsys, "sample", *common, args, match="scheduler.args must be a JSON object")
    whole = monai_model(tmp_path / "whole")
    (whole / "monai.json").write_bytes(NOT_AN_OBJECT["list"])
    refused(capsys, "sample", *common, whole, match="monai.json holds a JSON list")
    refused(capsys, "audit", "--run-dir", prepared, "--data-root", data_root, "--model", whole, "--dry-run",
            match="monai.json holds a JSON list")


# ---- 2. schedules that cannot be a diffusion model's -----------------------------------------------------------
def test_a_schedule_without_timesteps_names_the_field(prepared, data_root, tmp_path, capsys):
    folder = pipeline(tmp_path / "zero")
    edit_json(folder / "scheduler" / "scheduler_config.json", num_train_timesteps=0)
    common = ("--run-dir", prepared, "--data-root", data_root, "--model", folder)
    for command in (("sample", "--steps", 2, "--n", 2), ("nll",), ("tprime", "--detector", "nn", "--steps", 2),
                    ("audit", "--dry-run")):
        line = refused(capsys, command[0], *common, *command[1:], match="num_train_timesteps is 0")
        assert "scheduler_config.json" in line and "SampleConfig" not in line
    edit_json(folder / "scheduler" / "scheduler_config.json", num_train_timesteps="1000")
    refused(capsys, "sample", *common, "--n", 2, match="num_train_timesteps is '1000'")


def test_betas_outside_zero_one_are_refused(prepared, data_root, tmp_path, capsys):
    common = ("--run-dir", prepared, "--data-root", data_root)
    trained = pipeline(tmp_path / "trained")
    betas = [0.01] * 999 + [1.5]
    edit_json(trained / "scheduler" / "scheduler_config.json", trained_betas=betas)
    for command in (("sample", "--steps", 2, "--n", 2), ("nll",)):
        refused(capsys, command[0], *common, "--model", trained, *command[1:], match="trained_betas holds 1 value(s) "
                                                                                      "outside (0, 1) (beta_999 = 1.5)")
    edit_json(trained / "scheduler" / "scheduler_config.json", trained_betas=[0.01] * 10)
    refused(capsys, "nll", *common, "--model", trained, match="trained_betas holds 10 betas but num_train_timesteps is 1000")
    linear = pipeline(tmp_path / "linear", beta_end=1.5)
    refused(capsys, "sample", *common, "--model", linear, "--n", 2, match="beta_end 1.5")
    scaled = pipeline(tmp_path / "scaled")
    edit_json(scaled / "scheduler" / "scheduler_config.json", beta_schedule="scaled_linear", beta_start=-0.1)
    refused(capsys, "nll", *common, "--model", scaled, match="scaled_linear betas from beta_start -0.1")
    monai = monai_model(tmp_path / "monai", scheduler={"class": "DDPMScheduler",
                                                       "args": {"num_train_timesteps": 1000, "beta_end": 1.5}})
    refused(capsys, "sample", *common, "--model", monai, "--n", 2, match="monai.json: scheduler.args give beta_")
    refused(capsys, "sample", *common, "--model", pipeline(tmp_path / "ok"), "--scheduler", trained / "scheduler", "--n", 2,
            match="trained_betas holds 10 betas")  # --scheduler FOLDER is checked as the model's own


def test_a_non_square_unet_is_refused(prepared, data_root, tmp_path, capsys):
    folder = pipeline(tmp_path / "wide", unet=tiny_unet(size=(28, 32)))
    refused(capsys, "sample", "--run-dir", prepared, "--data-root", data_root, "--model", folder, "--n", 2,
            match="sample_size [28, 32] is not square")
    edit_json(folder / "unet" / "config.json", sample_size="28")
    refused(capsys, "sample", "--run-dir", prepared, "--data-root", data_root, "--model", folder, "--n", 2,
            match="sample_size '28' is not an image size")


# ---- 3. files outside the model folder, and files that are no weights -----------------------------------------
def test_weights_and_configs_outside_the_model_folder_are_refused(prepared, data_root, tmp_path, capsys):
    common = ("--run-dir", prepared, "--data-root", data_root, "--n", 2, "--model")
    other = monai_model(tmp_path / "other")
    up = monai_model(tmp_path / "up", weights="../other/model.safetensors")
    refused(capsys, "sample", *common, up, match="lies outside the model folder")
    passwd = monai_model(tmp_path / "passwd", weights="/etc/passwd")
    line = refused(capsys, "sample", *common, passwd, match="lies outside the model folder")
    assert "running code" not in line
    (tmp_path / "passwd" / "notes.txt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    edit_json(passwd / "monai.json", weights="notes.txt")
    refused(capsys, "sample", *common, passwd, match="not a weights file")
    linked = monai_model(tmp_path / "linked", weights="link.safetensors")
    (linked / "link.safetensors").symlink_to(other / "model.safetensors")
    refused(capsys, "sample", *common, linked, match="lies outside the model folder")
    # a diffusers pipeline whose weights or scheduler config are links out of it
    outside = pipeline(tmp_path / "outside")
    for where in ("unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json", "unet/config.json"):
        folder = pipeline(tmp_path / ("link-" + where.replace("/", "-")))
        (folder / where).unlink()
        (folder / where).symlink_to(outside / where)
        refused(capsys, "sample", *common, folder, match="lies outside the model folder")
    # a .bin that is a text file is named as no weights file, not as code
    text = tmp_path / "text"
    tiny_unet().save_pretrained(text)
    (text / "diffusion_pytorch_model.safetensors").unlink()
    (text / "diffusion_pytorch_model.bin").write_text("root:x:0:0:root:/root:/bin/bash\n")
    refused(capsys, "sample", *common, text, "--scheduler", "ddpm", match="not a weights file")
    assert not (prepared / "train").exists()


def test_a_hugging_face_cache_snapshot_is_read_through_its_links(tmp_path):
    source = pipeline(tmp_path / "source")
    snapshot = tmp_path / "models--x--y" / "snapshots" / "0123abcd"
    blobs = tmp_path / "models--x--y" / "blobs"
    blobs.mkdir(parents=True)
    for i, path in enumerate(sorted(p for p in source.rglob("*") if p.is_file())):
        blob = blobs / f"blob{i}"
        blob.write_bytes(path.read_bytes())
        link = snapshot / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    model = load_model(snapshot, image_shape=(1, 28, 28), device="cpu")
    assert model.model_id == load_model(source, image_shape=(1, 28, 28), device="cpu").model_id


# ---- 4. a refused attempt leaves the run as it was ---------------------------------------------------------------
def test_a_refused_model_is_not_registered_and_the_corrected_one_is_accepted(fresh, data_root, tmp_path, capsys):
    before = listing(fresh)
    common = ("--run-dir", fresh, "--data-root", data_root, "--quiet", "--model")
    short = pipeline(tmp_path / "short", num_train_timesteps=10)
    refused(capsys, "sample", *common, short, "--steps", 20, "--n", 2, match="20 inference steps for a model of 10")
    refused(capsys, "tprime", *common, short, "--detector", "nn", "--steps", 20,
            match="20 inference steps for a model of 10")
    trailing = pipeline(tmp_path / "trailing", timestep_spacing="trailing")  # inference timesteps 999 and 499
    refused(capsys, "tprime", *common, trailing, "--detector", "nn", "--steps", 2, "--resolution", 0.1,
            match="lies below the first inference timestep")
    refused(capsys, "tprime", *common, pipeline(tmp_path / "fine"), "--steps", 2, match="holds no trained classifier")
    refused(capsys, "audit", *common, short, "--sampling-steps", 20, match="20 inference steps for a model of 10")
    assert listing(fresh) == before
    good = pipeline(tmp_path / "good")
    refused(capsys, "sample", *common, good, "--name", "s", "--steps", 2000, "--n", 2,
            match="2000 inference steps for a model of 1000")
    assert listing(fresh) == before
    code, err = run(capsys, "sample", *common, good, "--name", "s", "--steps", 3, "--n", 2)
    assert code == 0, err
    assert read_json(fresh / "train" / "external.json")["path"] == str(good.resolve())
    assert read_json(fresh / "samples" / "s" / "config.json")["sample"]["steps"] == 3


def test_a_refused_sampling_writes_no_config(tmp_path):
    model = load_model(pipeline(tmp_path / "m"), image_shape=(1, 28, 28), device="cpu")
    out = tmp_path / "samples" / "x"
    with pytest.raises(DiffauditError, match="2000 inference steps"):
        generate_shards(out, model, SampleConfig(n=2, sampler="ddpm", steps=2000), progress=False)
    assert not out.exists()
    generate_shards(out, model, SampleConfig(n=2, sampler="ddpm", steps=2, batch_size=2), progress=False)
    assert read_json(out / "config.json")["sample"]["steps"] == 2


# ---- 5. the dry run checks what the real run will load -----------------------------------------------------------
def test_the_dry_run_loads_and_checks_the_model(fresh, data_root, tmp_path, capsys):
    before = listing(fresh)
    common = ("audit", "--run-dir", fresh, "--data-root", data_root, "--dry-run", "--model")
    refused(capsys, *common, pipeline(tmp_path / "short", num_train_timesteps=10), "--sampling-steps", 20,
            match="20 inference steps for a model of 10")
    refused(capsys, *common, pipeline(tmp_path / "wide", unet=tiny_unet(size=(28, 32))), match="not square")
    refused(capsys, *common, pipeline(tmp_path / "classes", unet=tiny_unet(num_class_embeds=5)), match="5 classes")
    refused(capsys, *common, pipeline(tmp_path / "rgb", unet=tiny_unet(channels=2)), match="2-channel")
    broken = pipeline(tmp_path / "broken")
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    refused(capsys, *common, broken, match="not a readable safetensors file")
    good = pipeline(tmp_path / "good")
    code, err = run(capsys, *common, good, "--sampling-steps", 20)
    assert code == 0, err
    assert listing(fresh) == before
    code, err = run(capsys, "sample", "--run-dir", fresh, "--data-root", data_root, "--model", good, "--n", 2,
                    "--steps", 2, "--quiet")
    assert code == 0, err
    refused(capsys, *common, pipeline(tmp_path / "other", beta_end=0.03), match="audits model")


# ---- 6. the file system --------------------------------------------------------------------------------------------
def test_export_into_a_path_inside_a_file_is_refused(prepared, data_root, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    refused(capsys, "export", "--run-dir", prepared, "--data-root", data_root, "--out", tmp_path / "file" / "sub",
            match="which is a file, not a folder")


def test_os_errors_are_one_line_naming_the_path(tmp_path, data_root, capsys, monkeypatch):
    long = tmp_path / ("r" * 300)
    refused(capsys, "prepare", "--run-dir", long, "--n-train", 8, "--data-root", data_root, match="File name too long")

    def read_only(*args, dir=None, **kw):
        raise OSError(errno.EROFS, "Read-only file system", str(dir))

    monkeypatch.setattr("diffaudit.io.tempfile.mkstemp", read_only)
    line = refused(capsys, "prepare", "--run-dir", tmp_path / "ro", "--n-train", 8, "--data-root", data_root,
                   match="Read-only file system")
    assert str(tmp_path / "ro") in line and "writable" in line
    assert not (tmp_path / "ro" / "manifest.json").exists()

    def denied(*args, dir=None, **kw):
        raise PermissionError(errno.EACCES, "Permission denied", str(dir))

    monkeypatch.setattr("diffaudit.io.tempfile.mkstemp", denied)
    refused(capsys, "prepare", "--run-dir", tmp_path / "ro", "--n-train", 8, "--data-root", data_root,
            match="Permission denied")


def test_a_blocked_release_still_exits_3(monkeypatch, capsys):
    def blocked(args):
        raise ReleaseBlocked("release blocked: the reproduction rate is at most 0.1")

    monkeypatch.setattr(cli, "_run", blocked)
    assert cli.main(["report", "--run-dir", "x", "--fail-above", "0.01"]) == 3
    assert "release blocked" in capsys.readouterr().err
