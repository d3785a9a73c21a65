"""Hostile and careless input across the commands: damaged or edited artefacts (shards, sequential.json, results.json,
export.json, external.json, model configs), paths that point outside a run or nowhere, and folders of the wrong kind.
Each is refused with one 'error:' line (exit 2), or named by ``verify`` (exit 4), and a refused command leaves the
run directory as it was."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from test_external import save_pipeline, tiny_unet
from test_hostile_models import fresh, pipeline, prepared, refused  # noqa: F401  (fixtures)
from test_verify import SAMPLES, audited, one_line, run  # noqa: F401  (audited: a fixture)

from diffaudit.errors import VERIFY_FAILED
from diffaudit.io import read_json, write_json

PNG = b"\x89PNG\r\n\x1a\n"


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its SHA-256 (folders and links too): what 'unchanged' means."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "link"
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "folder"
    return out


def edit(path: Path, change) -> None:
    data = read_json(path)
    change(data)
    write_json(path, data)


@pytest.fixture
def copy(audited, tmp_path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(audited, out)
    return out


def unchanged_after_refusal(capsys, rd: Path, *argv, match: str) -> str:
    before = snapshot(rd)
    line = refused(capsys, *argv, match=match)
    assert snapshot(rd) == before, argv
    return line


# ---- sample shards ----------------------------------------------------------------------------------------------
def _npy(path: Path) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.zeros(3))


def _npz(path: Path, **arrays) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _claiming(path: Path, members: dict) -> None:
    """An .npz whose members are arrays, or (for a shape) an .npy header claiming that shape over a few bytes."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, value in members.items():
            buf = io.BytesIO()
            if isinstance(value, tuple):
                np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": value})
                buf.write(b"\0" * 1000)
            else:
                np.lib.format.write_array(buf, value)
            z.writestr(f"{name}.npy", buf.getvalue())


SHARDS = {
    "not a zip": (lambda p: p.write_bytes(b"PK\x03\x04junk"), "not a readable .npz file"),
    "an .npy": (_npy, "not an .npz archive"),
    "float images": (lambda p: _npz(p, images=np.zeros((2, 1, 28, 28), np.float32), indices=np.arange(2, 4)),
                     "not n integer indices and n uint8"),
    "no indices": (lambda p: _npz(p, images=np.zeros((2, 1, 28, 28), np.uint8)), "has no 'indices' array"),
    "object arrays": (lambda p: _npz(p, images=np.array([object()]), indices=np.arange(2)), "allow_pickle=False"),
    "a header claiming 730 GiB": (lambda p: _claiming(p, {"indices": np.arange(2, 4), "images": (10**9, 1, 28, 28)}),
                                  "Unable to allocate"),
}


def test_a_data_file_claiming_more_than_the_machine_holds_is_one_line(tmp_path, capsys):
    z = lambda n: np.zeros((n, 28, 28), np.uint8)  # noqa: E731
    labels = lambda n: np.zeros((n, 1), np.uint8)  # noqa: E731
    _claiming(tmp_path / "breastmnist.npz", {"train_images": (10**9, 28, 28), "train_labels": labels(546),
                                             "val_images": z(78), "val_labels": labels(78), "test_images": z(156),
                                             "test_labels": labels(156)})
    refused(capsys, "prepare", "--run-dir", tmp_path / "run", "--data-root", tmp_path, match="Unable to allocate")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", list(SHARDS))
def test_a_damaged_shard_is_one_line_for_count_and_named_by_verify(copy, data_root, capsys, kind):
    damage, match = SHARDS[kind]
    shard = copy / SAMPLES / "shard_00001.npz"
    damage(shard)
    unchanged_after_refusal(capsys, copy, "count", "--run-dir", copy, "--quiet", "--data-root", data_root,
                            match=match)
    edit(copy / SAMPLES / "digests.json",  # a forger who records the damaged shard's digest too
         lambda d: d["files"].update({shard.name: hashlib.sha256(shard.read_bytes()).hexdigest()}))
    code, err = run(capsys, "verify", copy, "--quiet", "--data-root", data_root)
    assert code == VERIFY_FAILED and one_line(err).startswith(f"diffaudit verify: {SAMPLES}:") and match in err, err


def test_verify_compares_the_detectors_results_json_describes(copy, data_root, capsys):
    edit(copy / "results.json", lambda r: r["reproduction"]["detectors"]["c_p"].update(threshold=0.123))
    code, err = run(capsys, "verify", copy, "--quiet", "--data-root", data_root)
    assert code == VERIFY_FAILED and "reproduction.detectors" in one_line(err), err
    edit(copy / "results.json", lambda r: r["reproduction"].update(detectors={"c_p": 5}))
    for argv in (["report", "--run-dir", copy], ["report", "--run-dir", copy, "--fail-above", 1]):
        unchanged_after_refusal(capsys, copy, *argv, match="'reproduction.detectors' must map each detector")


# ---- the release gate and the report ------------------------------------------------------------------------------
def _forged_n(r: dict) -> None:
    for key in ("expected_q", "p_value", "rate", "rate_ci95", "rate_upper95"):
        r["reproduction"].pop(key)
    r["reproduction"]["n_samples"] = 10**9


def _sequential_stop(r: dict) -> None:
    rep = r["reproduction"]
    rep.update(design="sequential", positives={**rep["positives"], "q": rep["positives"]["q"]},
               sequential={"alpha": 0.05, "shard_size": 2, "n_samples": rep["n_samples"], "max_n": rep["n_samples"],
                           "reason": 5})


GATE = {
    "derived figures removed, N inflated": (_forged_n, "has no 'expected_q'"),
    "n_train 0": (lambda r: r.update(n_train=0), "n_train must be an integer >= 1"),
    "N beyond 2^53": (lambda r: r["reproduction"].update(n_samples=2**70), "at most 2^53"),
    "N a float": (lambda r: r["reproduction"].update(n_samples=6.0), "not whole number"),
    "a sequential stop that does not fit": (_sequential_stop, "reproduction.sequential says the count stopped"),
}


@pytest.mark.parametrize("kind", list(GATE))
def test_the_gate_refuses_counts_it_cannot_recompute_in_one_line(copy, capsys, kind):
    change, match = GATE[kind]
    edit(copy / "results.json", change)
    for argv in (["--fail-above", 0.001], ["--json"], []):
        unchanged_after_refusal(capsys, copy, "report", "--run-dir", copy, *argv, match=match)


def test_odd_metrics_leave_the_gate_to_the_counts(copy, capsys):
    edit(copy / "classifiers" / "metrics.json", lambda m: m.update(true_positive_rate={"copies_of_x_p": []}))
    code, err = run(capsys, "report", "--run-dir", copy, "--fail-above", 1)
    assert code == 0 and "release gate passed" in err, err


@pytest.mark.parametrize("where", ["t_prime figure", "positives figure", "linked figure", "samples grid"])
def test_a_report_embeds_only_png_figures(copy, tmp_path, capsys, where):
    secret = tmp_path / "secret.txt"
    secret.write_text("patient list: do not publish\n")
    if where == "t_prime figure":
        edit(copy / "results.json", lambda r: r.update(t_prime={
            "figure": str(secret), "M": 1, "value": 0.5, "value_alpha": 0.5, "alpha": 0.05, "chance_level": 0.1,
            "nfe": 1, "search": "fast", "bound": 0.1, "bound_ci95_upper": 0.1, "bound_note": "x"}))
    elif where == "positives figure":
        edit(copy / "results.json", lambda r: r["reproduction"].setdefault("figures", {}).update(
            q=f"../{secret.name}"))
    elif where == "linked figure":
        (copy / "prepare" / "x_i_and_x_p.png").unlink()
        (copy / "prepare" / "x_i_and_x_p.png").symlink_to(secret)
    else:
        (tmp_path / "elsewhere").mkdir()
        (tmp_path / "elsewhere" / "grid.png").write_bytes(secret.read_bytes())
        edit(copy / "results.json", lambda r: r["reproduction"].update(samples=str(tmp_path / "elsewhere")))
    unchanged_after_refusal(capsys, copy, "report", "--run-dir", copy, match="is not a PNG image")
    assert run(capsys, "report", "--run-dir", copy, "--fail-above", 1)[0] == 0  # the gate reads no figure


def test_a_report_that_cannot_be_drawn_writes_nothing(copy, capsys):
    edit(copy / "results.json", lambda r: r.update(nll_bpd={"x_p": 5}))
    unchanged_after_refusal(capsys, copy, "report", "--run-dir", copy, match="is not as diffaudit writes it")
    edit(copy / "results.json", lambda r: r.pop("nll_bpd"))
    (copy / "report.html").unlink()
    (copy / "report.html").mkdir()
    unchanged_after_refusal(capsys, copy, "report", "--run-dir", copy, match="report.html is not a file")


def test_compare_refuses_an_undrawable_curve_before_making_its_folder(audited, copy, tmp_path, capsys):
    edit(copy / "results.json", lambda r: r.update(t_prime={"value": 0.5, "value_alpha": 0.5, "grid": [0.5],
                                                            "q_M": [0.1], "chance_level": 0.1}))
    refused(capsys, "compare", audited, copy, "--out", tmp_path / "cmp", match="KeyError: 'q_M_ci95'")
    assert not (tmp_path / "cmp").exists()


# ---- export ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"\xff\xfe\x00binary", b"[1, 2]", None])
def test_an_existing_export_json_is_read_safely(prepared, data_root, tmp_path, capsys, content):  # noqa: F811
    out = tmp_path / "out"
    out.mkdir()
    if content is None:  # the right digest and options, but not the record of this export
        content = json.dumps({"manifest_digest": read_json(prepared / "manifest.json")["digest"],
                              "format": "imagefolder", "channels": 1, "size": 28}).encode()
    (out / "export.json").write_bytes(content)
    match = "not empty" if content.startswith(b"{") else "export.json"
    line = unchanged_after_refusal(capsys, out, "export", "--run-dir", prepared, "--out", out, "--data-root", data_root,
                                   match=match)
    assert "Traceback" not in line


def test_the_same_export_is_kept_and_an_edited_one_refused(prepared, data_root, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    argv = ["export", "--run-dir", prepared, "--out", out, "--data-root", data_root]
    assert run(capsys, *argv)[0] == 0
    before = snapshot(out)
    assert run(capsys, *argv)[0] == 0 and snapshot(out) == before
    first = next(p for p in out.rglob("*.png"))
    first.write_bytes(PNG + b"changed")
    unchanged_after_refusal(capsys, out, *argv, match="not empty")


def test_a_refused_control_export_leaves_no_control_set(fresh, data_root, tmp_path, capsys):  # noqa: F811
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    for extra in (["--out", busy], ["--size", 3]):
        unchanged_after_refusal(capsys, fresh, "export", "--run-dir", fresh, "--control", *extra, "--data-root",
                                data_root, match="not empty" if extra[0] == "--out" else "below the images")
    assert not (fresh / "control").exists()


# ---- the sequential count -------------------------------------------------------------------------------------------
GOOD_SEQ = {"method": "m", "alpha": 0.05, "target_rate": None, "p_null": 0.125, "max_n": 6, "shard_size": 2,
            "detector": "classifiers", "n_samples": 4, "q": 0, "reason": "max_n", "saved": 2, "saved_share": 0.3,
            "looks": [{"n": 2, "q": 0, "lo": 0, "hi": 1}, {"n": 4, "q": 0, "lo": 0, "hi": 1}]}
SEQ = {
    "a list": ([1], "holds a JSON list"),
    "n_samples a string": ({**GOOD_SEQ, "n_samples": "4"}, "must be whole numbers"),
    "alpha out of range": ({**GOOD_SEQ, "alpha": 5}, "alpha must be in (0, 1)"),
    "looks not a list": ({**GOOD_SEQ, "looks": 3}, "looks must be a list"),
    "a stop beyond the shards": ({**GOOD_SEQ, "n_samples": 100, "max_n": 100}, "the folder holds 6 of them"),
}


@pytest.mark.parametrize("kind", list(SEQ))
def test_sequential_json_is_checked_before_anything_is_counted(copy, data_root, capsys, kind):
    content, match = SEQ[kind]
    (copy / SAMPLES / "sequential.json").write_text(json.dumps(content))
    unchanged_after_refusal(capsys, copy, "count", "--run-dir", copy, "--quiet", "--data-root", data_root,
                            match=match)


def test_a_sequential_count_never_takes_over_the_counted_fixed_n_folder(copy, data_root, capsys):
    unchanged_after_refusal(capsys, copy, "sample", "--run-dir", copy, "--quiet", "--n", 6, "--steps", 3,
                            "--shard-size", 2, "--batch-size", 3, "--sequential", "--data-root", data_root,
                            match="holds the fixed-N samples results.json counted")


# ---- models trained elsewhere ----------------------------------------------------------------------------------------
def test_an_external_json_without_its_model_is_one_line(fresh, data_root, tmp_path, capsys):  # noqa: F811
    common = ["sample", "--run-dir", fresh, "--data-root", data_root, "--n", 2, "--steps", 2, "--quiet"]
    assert run(capsys, *common, "--model", pipeline(tmp_path / "m", num_train_timesteps=10))[0] == 0
    edit(fresh / "train" / "external.json", lambda r: r.pop("path"))
    unchanged_after_refusal(capsys, fresh, *common, match="does not name the model this run audits")


def _config(folder: Path, part: str, **changes) -> Path:
    path = folder / part
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return folder


def test_a_config_of_a_far_larger_network_than_its_weights_is_refused_unbuilt(  # noqa: F811
        prepared, data_root, tmp_path, capsys, monkeypatch):
    """4.4 billion parameters (17 GB) described by a config beside a few kB of weights: refused from the shapes alone,
    before any memory is taken for them."""
    import diffusers

    built = []
    real = diffusers.UNet2DModel.from_config.__func__

    def counting(cls, config, **kw):
        built.append(torch.empty(0).device.type)  # the device factory functions would use now
        return real(cls, config, **kw)

    monkeypatch.setattr(diffusers.UNet2DModel, "from_config", classmethod(counting))
    huge = _config(pipeline(tmp_path / "huge", num_train_timesteps=10), "unet/config.json",
                   block_out_channels=[4096, 4096])
    unchanged_after_refusal(capsys, prepared, "sample", "--run-dir", prepared, "--data-root", data_root, "--model",
                            huge, "--n", 2, "--steps", 2, match="does not fit its config")
    assert built == ["meta"]


def test_a_diffaudit_model_json_of_a_larger_network_is_refused(  # noqa: F811
        audited, prepared, data_root, tmp_path, capsys):
    model = tmp_path / "other"
    shutil.copytree(audited / "train", model / "train")
    edit(model / "train" / "model.json", lambda m: m["model"].update(block_out_channels=[4096, 4096, 4096]))
    unchanged_after_refusal(capsys, prepared, "sample", "--run-dir", prepared, "--data-root", data_root, "--model",
                            model, "--n", 2, "--steps", 2, match="does not fit the model in its config")
    edit(model / "train" / "model.json", lambda m: m.update(image_shape=["a", "b", "c"]))
    unchanged_after_refusal(capsys, prepared, "sample", "--run-dir", prepared, "--data-root", data_root, "--model",
                            model, "--n", 2, "--steps", 2, match="is not [C, H, W]")


def test_timesteps_outside_the_schedule_are_refused(prepared, data_root, tmp_path, capsys):  # noqa: F811
    folder = _config(pipeline(tmp_path / "offset", num_train_timesteps=10), "scheduler/scheduler_config.json",
                     steps_offset=-5)
    unchanged_after_refusal(capsys, prepared, "sample", "--run-dir", prepared, "--data-root", data_root, "--model",
                            folder, "--n", 2, "--steps", 2, match="include timestep -5")


def _different(folder: Path) -> Path:
    unet = tiny_unet()
    with torch.no_grad():
        unet.conv_in.bias.add_(0.01)
    return save_pipeline(folder, unet, DDPMScheduler(num_train_timesteps=10))


def test_the_control_model_is_checked_before_any_work(fresh, data_root, tmp_path, capsys):  # noqa: F811
    config = tmp_path / "audit.json"
    from test_audit import TINY

    from diffaudit.config import to_dict

    config.write_text(json.dumps(to_dict(TINY)))
    model = pipeline(tmp_path / "model", num_train_timesteps=10)
    audit = ["audit", "--run-dir", fresh, "--config", config, "--data-root", data_root, "--model", model, "--dry-run"]
    unchanged_after_refusal(capsys, fresh, *audit, "--control-model", model, match="is the audited model")
    unchanged_after_refusal(capsys, fresh, *audit, "--sampling-steps", 0, "--control-model", _different(
        tmp_path / "control"), match="SampleConfig.steps must be >= 1")
    wrong = _different(tmp_path / "wrong")  # says it was trained on the audited set, not the control set
    assert run(capsys, "export", "--run-dir", fresh, "--out", tmp_path / "data", "--data-root", data_root)[0] == 0
    shutil.copy(tmp_path / "data" / "export.json", wrong / "export.json")
    unchanged_after_refusal(capsys, fresh, *audit, "--control-model", wrong, match="trained on an export of another")
    (fresh / "control").write_text("")
    unchanged_after_refusal(capsys, fresh, *audit, "--control-model", tmp_path / "control",
                            match="is a file, not a folder")


# ---- paths and folders of the wrong kind -----------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["prepare", "--run-dir", ""], ["verify", ""], ["report", "--run-dir", " "],
                                  ["export", "--run-dir", "x", "--out", ""], ["compare", "a", "", "--out", "c"]])
def test_an_empty_path_is_not_the_current_directory(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    refused(capsys, *argv, match="is empty")
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_and_an_audit_never_share_a_folder(copy, tmp_path, data_root, capsys):
    unchanged_after_refusal(capsys, copy, "sweep", "--out", copy, "--n-train", 8, "--data-root", data_root,
                            match="is a run directory")
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "sweep.json").write_text("{}")
    unchanged_after_refusal(capsys, folder, "audit", "--run-dir", folder, "--data-root", data_root, "--stop-after",
                            "prepare", match="the folder of a sweep or a comparison")
