"""Run integrity: ``diffaudit verify`` against recorded digests and a recount, the mandatory manifest digest, one writer
for ``report`` and a read-only gate, ``compare --out`` and wrong-typed results.json sections, and an escaped
report.md."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffaudit.adversary.stage import train_classifiers
from diffaudit.audit.engine.verify import DIGESTS, stage_files
from diffaudit.cli import main
from diffaudit.config import CLASSIFIER_PRESETS
from diffaudit.errors import RELEASE_BLOCKED, VERIFY_FAILED
from diffaudit.io import load_tensors, read_json, save_npz, save_tensors, write_json

SAMPLES = "samples/em3-seed0"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def audited(tmp_path_factory, data_root) -> Path:
    """A small run made command by command: prepare, train, sample (3 shards), the classifiers (as train-classifiers
    makes them, with a smaller validation set), count, report."""
    rd = tmp_path_factory.mktemp("verify") / "run"
    dr = str(data_root)
    for argv in (["prepare", "--run-dir", rd, "--n-train", 8, "--data-root", dr],
                 ["train", "--run-dir", rd, "--quiet", "--data-root", dr, "--steps", 3, "--batch-size", 4,
                  "--checkpoint-every", 3],
                 ["sample", "--run-dir", rd, "--n", 6, "--steps", 3, "--shard-size", 2, "--batch-size", 3, "--quiet"]):
        assert main([str(a) for a in argv]) == 0, argv
    tiny = dict(max_epochs=1, patience=1, epoch_size=32, val_size=32, batch_size=16)
    train_classifiers(rd, {name: dataclasses.replace(cfg, **tiny) for name, cfg in CLASSIFIER_PRESETS["cpu"].items()},
                      data_root=dr, progress=False, log=lambda msg: None)
    for argv in (["count", "--run-dir", rd, "--quiet", "--data-root", dr], ["report", "--run-dir", rd]):
        assert main([str(a) for a in argv]) == 0, argv
    return rd


@pytest.fixture
def copy(audited, tmp_path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(audited, out)
    return out


def verify(capsys, rd, data_root):
    return run(capsys, "verify", rd, "--quiet", "--data-root", data_root)


def test_an_untouched_run_verifies_and_every_writer_recorded_its_digests(audited, data_root, capsys):
    code, err = verify(capsys, audited, data_root)
    assert code == 0, err
    assert "verified" in err
    for folder in ("train", "classifiers", SAMPLES):
        record = read_json(audited / folder / DIGESTS)
        assert record["algorithm"] == "sha256" and record["files"], folder
    assert set(read_json(audited / SAMPLES / DIGESTS)["files"]) == {f"shard_0000{k}.npz" for k in range(3)}
    assert set(stage_files(audited, "train", "em3-seed0")) == {"train/model.safetensors", "train/model.json"}
    assert "classifiers/c_p/model.safetensors" in stage_files(audited, "classifiers", "em3-seed0")


def _shard(rd):
    path = rd / SAMPLES / "shard_00001.npz"
    with np.load(path) as f:
        arrays = dict(f)
    arrays["images"] = (arrays["images"].astype(np.int16) + 1).clip(0, 255).astype(np.uint8)
    save_npz(path, **arrays)


def _weights(rd, where):
    tensors = load_tensors(rd / where)
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = tensors[name] + 1e-3
    save_tensors(rd / where, tensors)


def _edit(rd, name, change):
    data = read_json(rd / name)
    change(data)
    write_json(rd / name, data)


EDITS = {
    "shard": (_shard, f"{SAMPLES}/shard_00001.npz:"),
    "weights": (lambda rd: _weights(rd, "train/model.safetensors"), "train/model.safetensors:"),
    "detector": (lambda rd: _weights(rd, "classifiers/c_id/model.safetensors"), "classifiers/c_id/model.safetensors:"),
    "manifest": (lambda rd: _edit(rd, "manifest.json", lambda m: m.update(seed=99)), "manifest.json:"),
    "figure": (lambda rd: _edit(rd, "results.json", lambda r: r["reproduction"].update(p_value=0.01)),
               "results.json: reproduction.p_value"),
    "count": (lambda rd: _edit(rd, "results.json", lambda r: r["reproduction"].update(c_id=r["reproduction"]["c_id"] + 1)),
              "results.json: reproduction.c_id"),
    "verdict": (lambda rd: _edit(rd, "results.json", lambda r: r["verdict"].update(
        level="low" if r["verdict"]["level"] != "low" else "high")), "results.json: verdict.level"),
    "unrecorded": (lambda rd: (rd / SAMPLES / DIGESTS).unlink(), f"{SAMPLES}/shard_00000.npz: no SHA-256 recorded"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_verify_names_the_changed_artefact(copy, data_root, capsys, edit):
    change, named = EDITS[edit]
    change(copy)
    code, err = verify(capsys, copy, data_root)
    line = one_line(err)
    assert code == VERIFY_FAILED == 4
    assert line.startswith(f"diffaudit verify: {named}"), line


def test_stage_records_are_checked_against_the_files_they_name(copy, data_root, capsys):
    record = copy / "audit" / "stages" / "sample.json"
    write_json(record, {"stage": "sample", "files": stage_files(copy, "sample", "em3-seed0")})
    assert verify(capsys, copy, data_root)[0] == 0
    _edit(copy, "audit/stages/sample.json", lambda r: r["files"].update({f"{SAMPLES}/shard_00002.npz": "0" * 64}))
    code, err = verify(capsys, copy, data_root)
    assert code == 4 and one_line(err).startswith(f"diffaudit verify: {SAMPLES}/shard_00002.npz:")
    assert "audit/stages/sample.json" in err
    write_json(record, {"stage": "sample"})  # a record of a diffaudit that did not record digests
    code, err = verify(capsys, copy, data_root)
    assert code == 4 and "audit/stages/sample.json: records no digests" in one_line(err)


def test_a_sequential_count_verifies_against_its_confidence_sequence(copy, data_root, capsys):
    dr = data_root
    assert run(capsys, "sample", "--run-dir", copy, "--sequential", "--n", 6, "--steps", 3, "--shard-size", 2,
               "--name", "seq", "--quiet", "--data-root", dr)[0] == 0
    assert run(capsys, "count", "--run-dir", copy, "--samples", "seq", "--quiet", "--data-root", dr)[0] == 0
    assert read_json(copy / "results.json")["reproduction"]["design"] == "sequential"
    code, err = verify(capsys, copy, dr)  # the verdict stored by the earlier report is of the earlier count
    assert code == 4 and "results.json: verdict.interval" in one_line(err)
    assert run(capsys, "report", "--run-dir", copy)[0] == 0
    code, err = verify(capsys, copy, dr)
    assert code == 0, err
    _edit(copy, "results.json", lambda r: r["reproduction"].update(rate_upper95=r["reproduction"]["rate_upper95"] / 2))
    code, err = verify(capsys, copy, dr)
    assert code == 4 and "results.json: reproduction.rate_upper95" in one_line(err)


def test_a_manifest_without_its_digest_is_refused_and_can_be_resealed(copy, data_root, capsys):
    sealed = read_json(copy / "manifest.json")
    _edit(copy, "manifest.json", lambda m: m.pop("digest"))
    code, err = verify(capsys, copy, data_root)
    assert code == 4 and one_line(err).startswith("diffaudit verify: manifest.json:") and "has no digest" in err
    code, err = run(capsys, "export", "--run-dir", copy, "--data-root", data_root)
    assert code == 2 and "error:" in one_line(err) and "has no digest" in err and "--reseal-manifest" in err
    assert not (copy / "export").exists()
    code, err = run(capsys, "verify", copy, "--reseal-manifest")
    assert code == 0 and "resealed" in err
    assert read_json(copy / "manifest.json") == sealed
    assert verify(capsys, copy, data_root)[0] == 0


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def _read_only(folder: Path, on: bool) -> None:
    for p in [folder, *folder.rglob("*")]:
        mode = p.stat().st_mode
        p.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) if on else mode | stat.S_IWUSR)


def test_the_gate_reads_a_read_only_run_and_changes_nothing(copy, capsys):
    # as root, chmod does not stop a write: the snapshot of every file's bytes and mtime is the real check
    before = _snapshot(copy)
    _read_only(copy, True)
    try:
        if os.geteuid() != 0:
            with pytest.raises(PermissionError):
                (copy / "probe").write_text("")
        code, err = run(capsys, "report", "--run-dir", copy, "--fail-above", 1)
        assert code == 0 and "release gate passed" in err, err
        code, err = run(capsys, "report", "--run-dir", copy, "--fail-above", 0)
        q = read_json(copy / "results.json")["reproduction"]["q"]
        assert code in (0, RELEASE_BLOCKED) and (code == RELEASE_BLOCKED or q == 0), err
        code = main(["report", "--run-dir", str(copy), "--json"])
        out = capsys.readouterr().out
        assert code == 0 and json.loads(out)["level"]
        assert _snapshot(copy) == before
    finally:
        _read_only(copy, False)


def test_report_writes_under_the_run_lock(copy, capsys):
    holder = subprocess.Popen([sys.executable, "-c", f"from diffaudit.runlock import run_lock\nwith run_lock("
                               f"{str(copy)!r}):\n    print('locked', flush=True)\n    import time; time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = (copy / "report.md").stat().st_mtime_ns
        code, err = run(capsys, "report", "--run-dir", copy)
        assert code == 2 and "in use by another diffaudit process" in one_line(err)
        assert (copy / "report.md").stat().st_mtime_ns == before
        code, err = run(capsys, "report", "--run-dir", copy, "--fail-above", 1, "--write")
        assert code == 2 and "in use" in err
        assert run(capsys, "report", "--run-dir", copy, "--fail-above", 1)[0] == 0  # reads only: no lock needed
    finally:
        holder.kill()
        holder.wait()
    assert run(capsys, "report", "--run-dir", copy)[0] == 0
    assert (copy / "report.md").stat().st_mtime_ns > before


def test_compare_out_is_never_a_run_or_another_folder(audited, copy, tmp_path, capsys):
    other = tmp_path / "third"
    shutil.copytree(audited, other)
    for out, match in ((other, "is a run directory"), (copy, "lies in the compared run"),
                       (copy / "cmp", "lies in the compared run")):
        code, err = run(capsys, "compare", audited, copy, "--out", out)
        assert code == 2 and match in one_line(err), err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    code, err = run(capsys, "compare", audited, copy, "--out", busy)
    assert code == 2 and "other files" in one_line(err)
    afile = tmp_path / "afile"
    afile.write_text("")
    code, err = run(capsys, "compare", audited, copy, "--out", afile / "cmp")
    assert code == 2 and "is a file, not a folder" in one_line(err)
    assert afile.read_text() == "" and (busy / "notes.txt").read_text() == "mine"
    assert run(capsys, "compare", audited, copy, "--out", tmp_path / "cmp")[0] == 0
    assert run(capsys, "compare", audited, copy, "--out", tmp_path / "cmp")[0] == 0  # an earlier comparison: rewritten


def test_compare_recomputes_the_verdict(audited, copy, tmp_path, capsys):
    stored = read_json(audited / "results.json")["verdict"]["level"]
    _edit(copy, "results.json", lambda r: r["verdict"].update(level="forged", interval=[0, 0]))
    assert run(capsys, "compare", audited, copy, "--out", tmp_path / "cmp")[0] == 0
    levels = {r["level"] for r in read_json(tmp_path / "cmp" / "compare.json")["runs"]}
    assert levels == {stored}


@pytest.mark.parametrize("section, value", [("reproduction", [1]), ("verdict", "x"), ("provenance", 3)])
def test_wrong_typed_sections_give_one_line(audited, copy, tmp_path, capsys, section, value):
    _edit(copy, "results.json", lambda r: r.update({section: value}))
    for argv in (["report", "--run-dir", copy, "--json"], ["report", "--run-dir", copy, "--fail-above", 0.5],
                 ["compare", audited, copy, "--out", tmp_path / "cmp"]):
        code, err = run(capsys, *argv)
        line = one_line(err)
        assert code == 2 and "error:" in line and "results.json" in line and f"'{section}'" in line, (argv, err)


def test_report_md_escapes_markup_from_results_json(copy, capsys):
    _edit(copy, "results.json", lambda r: r["reproduction"]["detectors"]["c_id"].update(
        kind="<script>alert(1)</script> & co"))
    assert run(capsys, "report", "--run-dir", copy)[0] == 0
    md = (copy / "report.md").read_text()
    assert "<script>" not in md and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in md
    assert "<script>" not in (copy / "report.html").read_text()


def test_a_census_is_recounted_and_a_census_only_run_verifies_by_it(copy, data_root, capsys):
    dr = str(data_root)
    assert run(capsys, "census", "--run-dir", copy, "--quiet", "--data-root", dr)[0] == 0
    code, err = verify(capsys, copy, data_root)
    assert code == 0, err
    _edit(copy, "results.json", lambda r: r["census"].update(copies=r["census"]["copies"] + 1))
    code, err = verify(capsys, copy, data_root)
    assert code == VERIFY_FAILED and one_line(err).startswith("diffaudit verify: results.json: census.copies"), err
    # no canary count at all: the census is what verify checks, and the level it recomputes
    _edit(copy, "results.json", lambda r: (r.pop("reproduction"), r.pop("verdict", None),
                                           r["census"].update(copies=r["census"]["copies"] - 1)))
    code, err = verify(capsys, copy, data_root)
    assert code == 0 and "the census of N = 6" in err, err
    _edit(copy, "results.json", lambda r: r["census"]["verdict"].update(level="low" if r["census"]["verdict"]["level"]
                                                                        == "high" else "high"))
    code, err = verify(capsys, copy, data_root)
    assert code == VERIFY_FAILED and "census.verdict.level" in err, err
