"""The shared data options (--data and how it is read, the SAF): each parsed into PrepareConfig the same way by
prepare, audit, sweep and export, and every bad form refused with exit code 2 and one ``error:`` line."""

import pytest

from diffaudit.audit.engine.sweep import source_name, sweep_cells
from diffaudit.cli import _audit_config, _prepared_data, build_parser, main
from diffaudit.config import SAF_SIZE, PrepareConfig, override
from diffaudit.presets import get_audit_preset


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def one_line_error(capsys, *argv, match):
    code, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "error:" in lines[0], err
    for m in [match] if isinstance(match, str) else match:
        assert m in lines[0], err
    return lines[0]


@pytest.fixture
def prepared(monkeypatch, tmp_path):
    """``prepare``'s PrepareConfig, caught where it reaches prepare_run (nothing is read or written)."""
    seen = {}

    def prepare_run(run, cfg, *, data_root=None, download=False, log=print, progress=True):
        seen.update(run=run, cfg=cfg, data_root=data_root, download=download, progress=progress)
        return {}

    monkeypatch.setattr("diffaudit.data.prepare.prepare_run", prepare_run)

    def prepare(capsys, *argv):
        code, err = run(capsys, "prepare", "--run-dir", tmp_path / "run", *argv)
        assert code == 0, err
        return seen["cfg"]

    return prepare


def test_prepare_takes_every_data_option(prepared, capsys, tmp_path):
    cfg = prepared(capsys, "--data", tmp_path, "--data-format", "folder", "--size", 64, "--fit", "pad",
                   "--window", "40,400", "--slice", "1:mid", "--frames", "all", "--labels", "folders",
                   "--split-ratios", "0.7,0.2,0.1", "--skip-unreadable")
    assert cfg == override(PrepareConfig(), data=str(tmp_path), data_format="folder", size=64, fit="pad",
                           window=(40.0, 400.0), slice="1:mid", frames="all", labels="folders",
                           split_ratios=(0.7, 0.2, 0.1), skip_unreadable=True)


def test_prepare_without_data_options_keeps_the_defaults(prepared, capsys):
    cfg = prepared(capsys, "--n-train", 8)
    assert cfg == PrepareConfig(n_train=8)
    assert cfg.dataset == "breastmnist" and cfg.data is None and cfg.saf_radius is None and cfg.saf_intensity is None


def test_a_medmnist_size_reads_the_medmnist_plus_file(prepared, capsys):
    cfg = prepared(capsys, "--dataset", "pneumoniamnist", "--size", 128)
    assert (cfg.dataset, cfg.size, cfg.data) == ("pneumoniamnist", 128, None)


@pytest.mark.parametrize("given, radius, size", [("4px", 4.0, SAF_SIZE), ("4", 4.0, SAF_SIZE),
                                                 ("2.5 px", 2.5, SAF_SIZE), ("12%", None, 0.12)])
def test_saf_radius_in_pixels_or_as_a_share_of_the_side(prepared, capsys, given, radius, size):
    cfg = prepared(capsys, "--saf-radius", given)
    assert cfg.saf_radius == radius and cfg.saf_size == pytest.approx(size)


def test_saf_width_intensity_and_contrast(prepared, capsys):
    cfg = prepared(capsys, "--saf-shape", "ring", "--saf-width", "2px", "--saf-intensity", 0.9, "--saf-contrast", 0.3)
    assert (cfg.saf_shape, cfg.saf_width, cfg.saf_intensity, cfg.saf_contrast) == ("ring", 2.0, 0.9, 0.3)
    assert prepared(capsys, "--saf-width", "3").saf_width == 3.0


@pytest.mark.parametrize("argv, match", [
    (["--saf-radius", "abc"], ["argument --saf-radius", "4px or 4", "12%", "'abc'"]),
    (["--saf-radius", "4pt"], ["argument --saf-radius", "'4pt'"]),
    (["--saf-width", "5%"], ["argument --saf-width", "2px or 2", "'5%'"]),
    (["--saf-radius", "0px"], "saf_radius must be a positive finite number"),
    (["--saf-radius", "60%"], "saf_size must be below 0.5"),
    (["--saf-intensity", "1.5"], "saf_intensity must be in [0, 1]"),
    (["--saf-contrast", "x"], "argument --saf-contrast: invalid float value"),
    (["--window", "40"], ["argument --window", "CENTER,WIDTH", "'40'"]),
    (["--window", "40,abc"], ["argument --window", "'40,abc'"]),
    (["--window", "40,0"], "CENTER,WIDTH with a width of at least 1 (--window)"),
    (["--split-ratios", "0.5,0.5,0.5"], "three ratios train,val,test summing to 1 with train > 0 (--split-ratios)"),
    (["--split-ratios", "0.8,0.2"], ["argument --split-ratios", "TRAIN,VAL,TEST"]),
    (["--size", "0"], ["size must be one of 28, 64, 128, 224", "(--size)"]),
    (["--size", "abc"], "argument --size: takes S (an image side in pixels, e.g. 64) or D,H,W"),
    (["--data", "scans", "--size", "0"], "size must be between 8 and 1024 pixels (--size)"),
    (["--slice", "3:mid"], ["argument --slice", "AXIS[:INDEX|mid|all]"]),
    (["--fit", "stretch"], "argument --fit: invalid choice"),
    (["--data-format", "jpeg"], "argument --data-format: invalid choice"),
    (["--frames", "some"], "argument --frames: invalid choice"),
    (["--dataset", "breastmnist", "--data", "scans"],
     "give --dataset (a MedMNIST flag) or --data (your own images), not both"),
    (["--data", ""], "--data is empty"),
])
def test_bad_forms_are_one_line_errors(prepared, capsys, tmp_path, argv, match):
    one_line_error(capsys, "prepare", "--run-dir", tmp_path / "run", *argv, match=match)


# ---- audit and sweep: the options override the audit config's prepare section -------------------------------
def audit_config(*argv):
    return _audit_config(build_parser().parse_args(["audit", "--run-dir", "r", *map(str, argv)]))


def test_audit_applies_the_data_options_to_its_prepare_section(tmp_path):
    preset = get_audit_preset("cpu-demo")
    assert audit_config() == preset  # nothing given: the preset untouched
    cfg = audit_config("--data", tmp_path, "--size", 32, "--window", "40,400", "--saf-radius", "12%",
                       "--saf-contrast", 0.25, "--n-train", 16)
    assert cfg.prepare == override(preset.prepare, data=str(tmp_path), size=32, window=(40.0, 400.0), saf_size=0.12,
                                   saf_contrast=0.25, n_train=16)
    assert cfg.train == preset.train and cfg.sample == preset.sample


def test_a_share_of_the_side_replaces_a_radius_in_pixels(tmp_path):
    config = tmp_path / "audit.json"
    from diffaudit.config import to_dict
    from diffaudit.io import write_json

    preset = get_audit_preset("cpu-demo")
    write_json(config, to_dict(override(preset, prepare=override(preset.prepare, saf_radius=3.0))))
    cfg = _audit_config(build_parser().parse_args(["audit", "--run-dir", "r", "--config", str(config),
                                                   "--saf-radius", "10%"]))
    assert cfg.prepare.saf_radius is None and cfg.prepare.saf_size == pytest.approx(0.1)
    cfg = _audit_config(build_parser().parse_args(["audit", "--run-dir", "r", "--config", str(config)]))
    assert cfg.prepare.saf_radius == 3.0


def test_audit_refuses_dataset_and_data_together(capsys, tmp_path):
    one_line_error(capsys, "audit", "--run-dir", tmp_path / "run", "--dataset", "breastmnist", "--data", tmp_path,
                   "--dry-run", match="give --dataset (a MedMNIST flag) or --data (your own images), not both")
    one_line_error(capsys, "audit", "--run-dir", tmp_path / "run", "--saf-radius", "abc", match="argument --saf-radius")


def test_data_options_name_the_data_of_a_prepared_run(tmp_path):
    """A run prepared stage by stage is audited on its own data unless the command names data: the data options
    count as named, so the prepared config does not silently replace them."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text("{}")  # never read: the options name the data
    for argv in (["--data", str(tmp_path)], ["--saf-contrast", "0.3"], ["--size", "64"], ["--skip-unreadable"]):
        args = build_parser().parse_args(["audit", "--run-dir", str(run_dir), *argv])
        cfg = _audit_config(args)
        assert _prepared_data(cfg, args) is cfg


def test_class_conditional_counts_the_classes_of_a_data_source(monkeypatch, tmp_path):
    from diffaudit.cli import _class_conditional

    seen = []

    def number_of_classes_for(cfg, *, data_root=None):
        seen.append((cfg.data, data_root))
        return 4

    monkeypatch.setattr("diffaudit.data.prepare.number_of_classes_for", number_of_classes_for, raising=False)
    cfg = _class_conditional(audit_config("--data", tmp_path), "root")
    assert cfg.model.num_classes == 4 and seen == [(str(tmp_path), "root")]


def test_sweep_over_n_d_on_a_data_source(tmp_path, capsys):
    one_line_error(capsys, "sweep", "--out", tmp_path / "sweep", "--datasets", "breastmnist", "--data", tmp_path,
                   match="give --datasets (MedMNIST flags) or --data (your own images), not both")
    one_line_error(capsys, "sweep", "--out", tmp_path / "sweep", "--data", tmp_path, "--window", "1",
                   match="argument --window")
    args = build_parser().parse_args(["sweep", "--out", str(tmp_path / "sweep"), "--data", str(tmp_path / "my scans"),
                                      "--size", "32"])
    cfg = _audit_config(args)
    assert cfg.prepare.data == str(tmp_path / "my scans") and cfg.prepare.size == 32
    cells = sweep_cells(cfg, n_trains=[16, None])  # no MedMNIST file is opened, and the source is not read yet
    assert [name for name, _ in cells] == ["my-scans-n16", "my-scans-nall"]
    assert [c.prepare.n_train for _, c in cells] == [16, None]
    assert source_name(PrepareConfig(data="/x/list.csv")) == "list" and source_name(PrepareConfig()) == "breastmnist"


# ---- export: data options prepare the run first, as prepare would --------------------------------------------
def test_export_with_data_options_prepares_the_run_first(monkeypatch, capsys, tmp_path):
    calls = []

    def prepare_run(run, cfg, *, data_root=None, download=False, log=print, progress=True):
        calls.append(("prepare", run, cfg, progress))
        return {}

    def export_run(run, *, fmt, out, channels, size, data_root):
        calls.append(("export", run, size))
        return {"n_images": 3, "format": fmt, "channels": 1, "size": size, "resize": None, "digest": "d"}

    monkeypatch.setattr("diffaudit.data.prepare.prepare_run", prepare_run)
    monkeypatch.setattr("diffaudit.data.export.export_run", export_run)
    rd = tmp_path / "run"
    code, err = run(capsys, "export", "--run-dir", rd, "--data", tmp_path, "--fit", "pad", "--size", 64, "--quiet")
    assert code == 0, err
    assert calls == [("prepare", rd, PrepareConfig(data=str(tmp_path), fit="pad", size=64), False),
                     ("export", rd, 64)]
    calls.clear()
    assert run(capsys, "export", "--run-dir", rd, "--size", 64)[0] == 0  # no data options: the run as prepared
    assert calls == [("export", rd, 64)]
    one_line_error(capsys, "export", "--run-dir", rd, "--data", tmp_path, "--split-ratios", "1,1,1",
                   match="(--split-ratios)")
