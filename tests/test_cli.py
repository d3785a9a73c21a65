"""The command line: a tiny prepare -> train -> sample run, resumable shards, and one-line errors."""

import numpy as np
import pytest

from diffaudit.cli import build_parser, main
from diffaudit.generate import iter_shards

TINY = ["--steps", "3", "--batch-size", "4", "--checkpoint-every", "3"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err


@pytest.fixture
def trained(tmp_path, capsys, data_root):
    rd = tmp_path / "run"
    assert run(capsys, "prepare", "--run-dir", rd, "--n-train", 8, "--data-root", data_root)[0] == 0
    assert run(capsys, "train", "--run-dir", rd, "--quiet", "--data-root", data_root, *TINY)[0] == 0
    return rd


def test_prepare_train_sample_end_to_end(trained, capsys):
    code, err = run(capsys, "sample", "--run-dir", trained, "--n", 5, "--steps", 3, "--shard-size", 2,
                    "--batch-size", 3, "--quiet")
    assert code == 0, err
    out = trained / "samples" / "em3-seed0"
    assert sorted(p.name for p in out.glob("shard_*.npz")) == ["shard_00000.npz", "shard_00001.npz", "shard_00002.npz"]
    assert (out / "grid.png").exists() and (out / "config.json").exists()
    indices, images = zip(*iter_shards(out), strict=True)
    assert np.concatenate(indices).tolist() == [0, 1, 2, 3, 4]
    first = np.concatenate(images)
    assert first.dtype == np.uint8 and first.shape == (5, 1, 28, 28)

    # a lost shard is redone alone, identically; the others are kept untouched
    kept = (out / "shard_00000.npz").stat().st_mtime_ns
    (out / "shard_00001.npz").unlink()
    assert run(capsys, "sample", "--run-dir", trained, "--n", 5, "--steps", 3, "--shard-size", 2, "--quiet")[0] == 0
    assert (out / "shard_00000.npz").stat().st_mtime_ns == kept
    np.testing.assert_array_equal(np.concatenate([x for _, x in iter_shards(out)]), first)

    # raising N keeps the finished shards and adds the rest; image i is the same whatever the batch size
    assert run(capsys, "sample", "--run-dir", trained, "--n", 7, "--steps", 3, "--shard-size", 2,
               "--batch-size", 1, "--quiet")[0] == 0
    more = np.concatenate([x for _, x in iter_shards(out)])
    assert more.shape[0] == 7
    np.testing.assert_array_equal(more[:5], first)

    # rerunning finished stages keeps them
    code, err = run(capsys, "prepare", "--run-dir", trained, "--n-train", 8)
    assert code == 0 and "kept" in err


def _one_line_error(capsys, *argv, match):
    code, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and match in lines[0], err
    return lines[0]


def test_errors_are_one_line_and_leave_nothing_behind(tmp_path, capsys, data_root):
    rd = tmp_path / "run"
    _one_line_error(capsys, "prepare", "--run-dir", rd, "--n-train", 100000, "--data-root", data_root,
                    match="use --n-train between 1 and 546")
    _one_line_error(capsys, "prepare", "--run-dir", rd, "--saf-radius", 20, "--data-root", data_root,
                    match="cannot fit")
    _one_line_error(capsys, "prepare", "--run-dir", rd, "--data-root", tmp_path / "nowhere", match="not found")
    assert not rd.exists() or not any(rd.rglob("*"))  # nothing written by failed commands
    _one_line_error(capsys, "train", "--run-dir", rd, match="run 'diffaudit prepare")
    assert run(capsys, "prepare", "--run-dir", rd, "--n-train", 8, "--data-root", data_root)[0] == 0
    _one_line_error(capsys, "prepare", "--run-dir", rd, "--n-train", 9, "--data-root", data_root,
                    match="holds a training set of another config (config.n_train: 8 -> 9)")
    _one_line_error(capsys, "train", "--run-dir", rd, "--sde", "foo", *TINY, match="argument --sde: invalid choice: 'foo'")
    _one_line_error(capsys, "sample", "--run-dir", rd, match="has no model")
    assert run(capsys, "train", "--run-dir", rd, "--quiet", "--data-root", data_root, *TINY)[0] == 0
    _one_line_error(capsys, "sample", "--run-dir", rd, "--sampler", "ddim", "--n", 2, match="continuous subvp SDE; choose em, pc or ode")
    _one_line_error(capsys, "sample", "--run-dir", rd, "--sampler", "foo", "--n", 2, match="argument --sampler: invalid choice")
    _one_line_error(capsys, "sample", "--run-dir", rd, "--n", 0, match="n must be >= 1")
    # a checkpoint with NaNs, as a diverged run would leave
    from diffaudit.io import load_tensors, save_tensors

    weights = load_tensors(rd / "train" / "model.safetensors")
    weights = {k: v.clone().fill_(float("nan")) if v.is_floating_point() else v for k, v in weights.items()}
    save_tensors(rd / "train" / "model.safetensors", weights)
    _one_line_error(capsys, "sample", "--run-dir", rd, "--n", 2, match="NaN/Inf")
    assert not list(tmp_path.rglob("*.tmp"))


def test_every_command_has_help_with_an_example():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert "example:" in p.format_help(), name


def test_each_command_module_holds_its_parser_beside_its_handler():
    import importlib

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, p in sub.choices.items():
        handler = p.get_default("func")
        module = importlib.import_module(handler.__module__)
        assert module.__name__.startswith("diffaudit.cli.") and callable(module.add_parser), name
        assert handler.__name__ == "cmd_" + name.replace("-", "_"), name


def test_the_data_options_are_defined_once_and_shared():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    data = ("--data PATH", "--data-format", "--fit", "--window", "--slice", "--frames", "--labels", "--split-ratios",
            "--skip-unreadable", "--spacing", "--volume-index", "--patient-pattern", "--series")
    saf = ("--saf-radius", "--saf-width", "--saf-intensity", "--saf-contrast")
    for name in ("prepare", "audit", "sweep", "export"):
        text = sub.choices[name].format_help()
        assert all(option in text for option in data), name
        assert ("--size S|D,H,W " in text) == (name != "export"), name  # export has its own --size SIZE
        assert all(option in text for option in saf) == (name in ("prepare", "audit")), name
    assert "--data PATH" not in sub.choices["train"].format_help()
