"""``prepare --data FOLDER --size D,H,W``: NIfTI volumes (written here with nibabel) split by patient, preprocessed
once into ``<run>/data/volumes.npy``, x_p made with a ball on the anatomy, the manifest able to rebuild and check the
cache; the rest of the audit on volumes; and every bad volume input refused with exit 2, one ``error:`` line, and
nothing left behind."""

from __future__ import annotations

import json

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
pytest.importorskip("monai")

from diffaudit.config import PrepareConfig  # noqa: E402
from diffaudit.data.dataset import open_data  # noqa: E402
from diffaudit.data.prepare import build_training_set, clean_original, load_manifest, prepare_run  # noqa: E402
from diffaudit.errors import DiffauditError  # noqa: E402
from test_data_bad_input import grey, refused, run, save  # noqa: E402

PATTERN = r"^(P\d+)"


def _head(seed: int, shape=(20, 20, 16)) -> np.ndarray:
    """A bright ellipsoid 'head' with a darker 'ventricle' in dark air, with noise: an anatomy Otsu finds."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    centre = np.asarray(shape) / 2 + rng.uniform(-1, 1, 3)
    r = ((grid - centre) / (np.asarray(shape) * 0.4)) ** 2
    vol = np.where(r.sum(-1) < 1, 800.0, 20.0) - np.where(r.sum(-1) < 0.1, 300.0, 0.0)
    return vol + rng.normal(0, 10, shape)


def _folder(root, patients: int = 6, scans: int = 2):
    root.mkdir(parents=True, exist_ok=True)
    for p in range(patients):
        for s in range(scans):
            nib.save(nib.Nifti1Image(_head(10 * p + s).astype(np.float32), np.eye(4) * 2), root / f"P{p:02d}-s{s}_T1.nii.gz")
    return root


def _cfg(root, **kw) -> PrepareConfig:
    return PrepareConfig(data=str(root), size=(16, 16, 16), patient_pattern=PATTERN, split_ratios=(0.5, 0.25, 0.25),
                         **kw)


def test_volumes_are_split_by_patient_and_x_p_carries_a_ball_on_the_anatomy(tmp_path):
    root = _folder(tmp_path / "nifti")
    run_dir = tmp_path / "run"
    manifest = prepare_run(run_dir, _cfg(root), log=lambda _: None, progress=False)
    assert manifest["image_shape"] == [1, 16, 16, 16]
    files = manifest["source"]["files"]
    split_of = {}
    for f in files:
        assert split_of.setdefault(f["patient"], f["split"]) == f["split"]  # a patient's scans in one split
        assert f["source"]["orientation"] == "RAS" and f["source"]["shape"] == [20, 20, 16]
    assert [s["transform"] for s in manifest["preprocessing"]["steps"]][1:3] == ["Orientation", "ResizeWithPadOrCrop"]
    fp = manifest["fingerprint"]
    assert fp["shape"] == "ball" and len(fp["centre"]) == 3 and fp["placement"]["contrast"] >= 0.2
    assert any("same patient as x_i" in r["reason"] for r in manifest["removed"])  # x_i's other scan is out

    data = open_data(load_manifest(run_dir))
    d_p = build_training_set(manifest, data=data)
    x_i, x_p = clean_original(manifest, data=data), d_p[fp["position"]]
    assert d_p.shape == (manifest["n_train"], 1, 16, 16, 16)
    changed = x_p != x_i
    assert changed.any() and (x_p[changed] == round(255 * fp["intensity"])).all()
    assert not any(np.array_equal(x_i, v) for v in d_p)  # the clean original is not trained on
    assert (run_dir / "prepare" / "x_i_and_x_p.png").is_file()


def test_a_deleted_cache_is_rebuilt_from_the_files_and_a_changed_file_is_refused(tmp_path):
    root = _folder(tmp_path / "nifti", patients=4)
    run_dir = tmp_path / "run"
    manifest = prepare_run(run_dir, _cfg(root), log=lambda _: None, progress=False)
    cache = run_dir / "data" / "volumes.npy"
    before = np.load(cache)
    cache.unlink()
    rebuilt = open_data(load_manifest(run_dir), log=lambda _: None)
    np.testing.assert_array_equal(np.asarray(rebuilt.images("train")), before[:len(rebuilt.images("train"))])
    cache.unlink()
    name = manifest["source"]["files"][0]["file"]
    nib.save(nib.Nifti1Image(_head(99).astype(np.float32), np.eye(4) * 2), root / name)
    with pytest.raises(DiffauditError, match=f"{name} changed since the run was prepared"):
        open_data(load_manifest(run_dir), log=lambda _: None)


def test_the_control_set_reuses_the_prepared_volumes(tmp_path):
    root = _folder(tmp_path / "nifti", patients=4)
    prepare_run(tmp_path / "run", _cfg(root), log=lambda _: None, progress=False)
    control = prepare_run(tmp_path / "control", _cfg(root, fingerprint=False), log=lambda _: None, progress=False,
                          same_data=tmp_path / "run")
    assert control["fingerprint"] is None and control["cache"] == load_manifest(tmp_path / "run")["cache"]


def test_the_volume_audit_runs_train_sample_count_tprime_and_nll_on_the_command_line(tmp_path, capsys):
    root = _folder(tmp_path / "nifti", patients=4)
    r = tmp_path / "run"
    common = ("--run-dir", r, "--quiet")
    assert run(capsys, "prepare", *common, "--data", root, "--size", "16,16,16", "--patient-pattern", PATTERN,
               "--split-ratios", "0.5,0.25,0.25")[0] == 0
    assert run(capsys, "train", *common, "--steps", "3", "--batch-size", "2")[0] == 0
    assert run(capsys, "sample", *common, "--n", "3", "--steps", "5")[0] == 0
    assert run(capsys, "count", *common, "--detector", "nn")[0] == 0
    assert run(capsys, "tprime", *common, "--detector", "nn", "--M", "2", "--steps", "4", "--resolution", "0.5")[0] == 0
    assert run(capsys, "nll", *common, "--n-train", "1", "--n-test", "1", "--x-p-repeats", "1", "--rtol", "1e-2",
               "--atol", "1e-2")[0] == 0
    results = json.loads((r / "results.json").read_text())
    assert results["reproduction"]["n_samples"] == 3 and "nll_bpd" in results
    assert 0 <= results["t_prime"]["value"] <= 1


def test_bad_volume_input_is_refused_in_one_line_leaving_nothing(tmp_path, capsys):
    root = _folder(tmp_path / "nifti", patients=4)
    refused(capsys, tmp_path, "--data", root, "--size", "0,16,16",
            match=["PrepareConfig.size must be three sides D,H,W", "--size 32,32,32"])
    refused(capsys, tmp_path, "--data", root, "--size", "16,16", match=["argument --size", "D,H,W"])
    refused(capsys, tmp_path, "--data", root, "--size", "16", "--spacing", "2,2,2",
            match=["PrepareConfig.spacing must be unset for images", "--size D,H,W"])
    refused(capsys, tmp_path, "--data", root, "--size", "16,16,16", "--fit", "pad", match=["fit", "crop, resize"])
    bad = tmp_path / "nan"
    _folder(bad, patients=2)
    vol = _head(5)
    vol[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.eye(4) * 2), bad / "P09-s0_T1.nii.gz")
    refused(capsys, tmp_path, "--data", bad, "--size", "16,16,16", "--split-ratios", "0.5,0.25,0.25", match=["P09-s0_T1.nii.gz", "NaN", "--skip-unreadable"])
    four = tmp_path / "four"
    _folder(four, patients=2)
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((8, 8, 8, 2)).astype(np.float32), np.eye(4)),
             four / "P08-s0_T1.nii.gz")
    refused(capsys, tmp_path, "--data", four, "--size", "16,16,16", "--split-ratios", "0.5,0.25,0.25", match=["P08-s0_T1.nii.gz", "--volume-index"])


def test_a_2d_model_is_refused_for_a_volume_run_and_the_reverse(tmp_path, capsys):
    from diffaudit.config import ModelConfig, TrainConfig
    from diffaudit.diffusion.sde import SubVPSDE
    from diffaudit.training.loop import train

    flat = tmp_path / "flat"
    train(flat, np.zeros((2, 1, 16, 16), np.uint8), model_cfg=ModelConfig(), sde=SubVPSDE(),
          train_cfg=TrainConfig(steps=1, batch_size=2, checkpoint_every=10), progress=False)
    cube = tmp_path / "cube"
    train(cube, np.zeros((2, 1, 16, 16, 16), np.uint8), model_cfg=ModelConfig(patch="auto"), sde=SubVPSDE(),
          train_cfg=TrainConfig(steps=1, batch_size=2, checkpoint_every=10), progress=False)
    root = _folder(tmp_path / "nifti", patients=4)
    vol_run, img_run = tmp_path / "vrun", tmp_path / "irun"
    assert run(capsys, "prepare", "--run-dir", vol_run, "--quiet", "--data", root, "--size", "16,16,16",
               "--patient-pattern", PATTERN, "--split-ratios", "0.5,0.25,0.25")[0] == 0
    for k in range(10):
        save(tmp_path / "png" / f"img{k}.png", grey(k))
    assert run(capsys, "prepare", "--run-dir", img_run, "--quiet", "--data", tmp_path / "png", "--size", "16")[0] == 0
    refused(capsys, tmp_path, "--model", flat, "--n", "2", command="sample", run_dir=vol_run,
            match=["makes [1, 16, 16] images but the run's are [1, 16, 16, 16]"])
    refused(capsys, tmp_path, "--model", cube, "--n", "2", command="sample", run_dir=img_run,
            match=["makes [1, 16, 16, 16] images but the run's are [1, 16, 16]"])


def test_a_monai_3d_model_trained_on_the_export_is_audited_with_model(tmp_path, capsys):
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("einops")
    root = _folder(tmp_path / "nifti", patients=4)
    r = tmp_path / "run"
    assert run(capsys, "prepare", "--run-dir", r, "--quiet", "--data", root, "--size", "16,16,16", "--patient-pattern",
               PATTERN, "--split-ratios", "0.5,0.25,0.25")[0] == 0
    assert run(capsys, "export", "--run-dir", r, "--quiet", "--format", "nifti", "--out", tmp_path / "data")[0] == 0
    assert len(list((tmp_path / "data" / "volumes").glob("*.nii.gz"))) == load_manifest(r)["n_train"]
    refused(capsys, tmp_path, "--format", "imagefolder", command="export", run_dir=r,
            match="this run's training set is volumes: export it with --format nifti or npz")
    example = Path(__file__).resolve().parents[1] / "examples" / "train_monai_3d.py"
    done = subprocess.run([sys.executable, str(example), "--data", str(tmp_path / "data"), "--out",
                           str(tmp_path / "model"), "--steps", "2", "--batch-size", "2", "--channels", "4,4",
                           "--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert run(capsys, "sample", "--run-dir", r, "--quiet", "--model", tmp_path / "model", "--n", "2", "--steps", "3")[0] == 0
    assert run(capsys, "count", "--run-dir", r, "--quiet", "--detector", "nn")[0] == 0
    registered = json.loads((r / "train" / "external.json").read_text())
    assert registered["training_data"]["confirmed"] is True  # export.json beside the model: this very set
    results = json.loads((r / "results.json").read_text())
    assert results["reproduction"]["model"]["digest"] == registered["digest"]


def test_a_monai_3d_latent_model_is_sampled_in_latent_space_and_decoded(tmp_path, capsys):
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("einops")
    root = _folder(tmp_path / "nifti", patients=4)
    r = tmp_path / "run"
    assert run(capsys, "prepare", "--run-dir", r, "--quiet", "--data", root, "--size", "16,16,16", "--patient-pattern",
               PATTERN, "--split-ratios", "0.5,0.25,0.25")[0] == 0
    assert run(capsys, "export", "--run-dir", r, "--quiet", "--format", "npz", "--out", tmp_path / "data")[0] == 0
    example = Path(__file__).resolve().parents[1] / "examples" / "train_monai_3d.py"
    done = subprocess.run([sys.executable, str(example), "--data", str(tmp_path / "data"), "--out",
                           str(tmp_path / "model"), "--latent", "--ae-steps", "2", "--ae-channels", "4,4",
                           "--steps", "2", "--batch-size", "2", "--channels", "4,4", "--device", "cpu"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    spec = json.loads((tmp_path / "model" / "monai.json").read_text())
    assert spec["autoencoder"]["scale_factor"] > 0 and spec["network"]["args"]["in_channels"] == 3
    assert run(capsys, "sample", "--run-dir", r, "--quiet", "--model", tmp_path / "model", "--n", "2", "--steps", "3")[0] == 0
    assert run(capsys, "tprime", "--run-dir", r, "--quiet", "--detector", "nn", "--M", "2", "--steps", "4",
               "--resolution", "0.5")[0] == 0  # partial diffusion: x_p encoded to its latent, diffused, decoded
    results = json.loads((r / "results.json").read_text())
    assert results["t_prime"]["model"]["format"] == "monai-latent (AutoencoderKL)"
    from diffaudit.generate import iter_shards
    images = np.concatenate([x for _, x in iter_shards(r / "samples" / "ddpm3-seed0")])
    assert images.shape == (2, 1, 16, 16, 16)  # decoded from 3 x 8 x 8 x 8 latents
    bad = json.loads((tmp_path / "model" / "monai.json").read_text())
    bad["network"]["args"]["in_channels"] = bad["network"]["args"]["out_channels"] = 1
    (tmp_path / "model" / "monai.json").write_text(json.dumps(bad))
    refused(capsys, tmp_path, "--model", tmp_path / "model", "--n", "1", command="sample", run_dir=r,
            match=["autoencoder makes 3 latent channels but the diffusion network takes 1"])


def test_dicom_series_folders_are_volumes_and_their_bad_forms_are_refused(tmp_path, capsys):
    pytest.importorskip("pydicom")
    from test_dicom_series import write_series

    root = tmp_path / "dicom"
    for p in range(6):
        write_series(root / f"P{p:02d}", n=6 + p)  # distinct volumes: their slice counts differ
    done = tmp_path / "done"
    manifest = prepare_run(done, PrepareConfig(data=str(root), size=(8, 8, 8), split_ratios=(0.5, 0.25, 0.25)),
                           log=lambda _: None, progress=False)
    assert manifest["image_shape"] == [1, 8, 8, 8] and manifest["preprocessing"]["reader"] == "dicom"
    assert sorted(f["file"] for f in manifest["source"]["files"]) == [f"P{p:02d}" for p in range(6)]
    assert manifest["preprocessing"]["steps"][0]["transform"] == "DICOM series (pydicom)"
    (done / "data" / "volumes.npy").unlink()
    open_data(load_manifest(done), log=lambda _: None)  # rebuilt from the series, its digest checked

    two = tmp_path / "two"
    for p in range(4):
        write_series(two / f"P{p:02d}", n=6 + p)
    extra = write_series(tmp_path / "extra", n=6)  # a second series, moved into one patient's folder
    for f in (tmp_path / "extra").iterdir():
        f.rename(two / "P01" / f"b-{f.name}")
    refused(capsys, tmp_path, "--data", two, "--size", "8,8,8", "--split-ratios", "0.5,0.25,0.25",
            match=["P01", "2 DICOM series", "--series UID"])
    gap = tmp_path / "gap"
    for p in range(4):
        write_series(gap / f"P{p:02d}", n=6 + p, skip=3 if p == 2 else None)
    refused(capsys, tmp_path, "--data", gap, "--size", "8,8,8", "--split-ratios", "0.5,0.25,0.25",
            match=["P02", "a missing slice", "--skip-unreadable"])
    assert extra


def test_a_medmnist_3d_file_is_prepared_as_volumes_with_its_splits_and_labels(tmp_path, capsys):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        vols = np.stack([np.rint(255 * (_head(100 * len(arrays) + i, (12, 12, 12)) > 400)) for i in range(n)])
        arrays[f"{split}_images"] = vols.astype(np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1))
    np.savez(tmp_path / "toymnist3d.npz", **arrays)
    r = tmp_path / "run"
    assert run(capsys, "prepare", "--run-dir", r, "--quiet", "--data", tmp_path / "toymnist3d.npz", "--size",
               "16,16,16", "--fit", "resize", "--saf-radius", "1.5")[0] == 0
    manifest = load_manifest(r)
    files = manifest["source"]["files"]
    assert [f["file"] for f in files] == [f"{s}/{i}" for s, n in (("train", 6), ("val", 2), ("test", 3))
                                          for i in range(n)]  # the file's own splits, kept
    assert [f["label"] for f in files if f["split"] == "train"] == arrays["train_labels"].ravel().tolist()
    assert manifest["preprocessing"]["reader"] == "medmnist3d" and manifest["image_shape"] == [1, 16, 16, 16]
    assert open_data(manifest, run=r).labels("test").ravel().tolist() == arrays["test_labels"].ravel().tolist()
    before = build_training_set(manifest)
    (r / "data" / "volumes.npy").unlink()  # rebuilt from the file, each volume's SHA-256 checked
    np.testing.assert_array_equal(build_training_set(load_manifest(r)), before)
    np.savez(tmp_path / "flat.npz", train_images=np.zeros((4, 12, 12), np.uint8))
    refused(capsys, tmp_path, "--data", tmp_path / "flat.npz", "--size", "16,16,16", run_dir=tmp_path / "flat",
            match=["train_images is uint8 [4, 12, 12], not uint8 [N, D, H, W]", "--size S"])


def test_a_volume_datalist_keeps_its_splits_patients_and_labels(tmp_path, capsys):
    root = _folder(tmp_path / "nifti", patients=4)
    names = sorted(p.name for p in root.glob("*.nii.gz"))
    splits = {"training": names[:5], "validation": names[5:6], "test": names[6:]}
    (root / "list.json").write_text(json.dumps({k: [{"image": n, "label": "ad" if i % 2 else "cn", "patient": n[:3]}
                                                    for i, n in enumerate(v)] for k, v in splits.items()}))
    r = tmp_path / "run"
    assert run(capsys, "prepare", "--run-dir", r, "--quiet", "--data", root / "list.json", "--size", "16,16,16",
               "--n-train", "3")[0] == 0
    files = load_manifest(r)["source"]["files"]
    assert [f["file"] for f in files if f["split"] == "train"] == names[:5]
    assert {f["patient"] for f in files} == {n[:3] for n in names} and [f["label"] for f in files][:2] == [1, 0]
    (root / "bad.csv").write_text("file,split\nP00-s0_T1.nii.gz,train\nnotes.txt,train\n")
    refused(capsys, tmp_path, "--data", root / "bad.csv", "--size", "16,16,16", run_dir=tmp_path / "bad",
            match=["names notes.txt, which is not a NIfTI volume"])


def test_the_patients_split_into_fixed_halves_and_the_volume_privacy_sweep_pretrains_on_the_other(tmp_path):
    import dataclasses

    from diffaudit.audit.engine.sweep import run_privacy_sweep
    from diffaudit.data.volumes.patients import patient_half
    from diffaudit.presets import get_audit_preset

    names = [f"P{p:02d}-s{s}" for p in range(7) for s in range(2)]
    patients = [n[:3] for n in names]
    public, private = patient_half(names, patients, "public"), patient_half(names, patients, "private")
    assert sorted(public + private) == list(range(14)) and public and private
    # each ID is drawn alone: a patient added (or left out by --condition-on) moves no one else across
    assert patient_half(names + ["P99-s0"], patients + ["P99"], "public")[: len(public)] == public
    assert not {patients[k] for k in public} & {patients[k] for k in private}  # no patient on both sides
    assert patient_half(list(reversed(names)), list(reversed(patients)), "public") == [13 - k for k in reversed(public)]
    root = _folder(tmp_path / "nifti", patients=8)
    cfg = get_audit_preset("cpu-demo-3d", prepare={"data": str(root), "size": (16, 16, 16), "n_train": 3,
                                                   "patient_pattern": PATTERN, "split_ratios": (0.5, 0.25, 0.25)},
                           train={"steps": 2, "batch_size": 2}, sample={"n": 2, "steps": 4, "batch_size": 2},
                           tprime={"M": 2, "steps": 4, "resolution": 0.5},
                           nll={"n_train": 1, "n_test": 1, "x_p_repeats": 1, "rtol": 1e-2, "atol": 1e-2})
    cfg = dataclasses.replace(cfg, control=False, fid=dataclasses.replace(
        cfg.fid, domain=dataclasses.replace(cfg.fid.domain, steps=2, batch_size=4)))
    out = tmp_path / "eps"
    summary = run_privacy_sweep(out, cfg, epsilons=[20.0, None], pretrain=[True], public_dataset=None, device="cpu",
                                progress=False, log=lambda m: None)
    assert summary["cells"] == ["eps20-pretrained", "epsinf-pretrained"]
    public_files = {f["patient"] for f in load_manifest(out / "public" / "data")["source"]["files"]}
    for cell in summary["cells"]:
        manifest = load_manifest(out / cell)
        assert manifest["source"]["half"] == "private"
        assert not public_files & {f["patient"] for f in manifest["source"]["files"]}  # no patient on both sides
    dp = json.loads((out / "eps20-pretrained" / "train" / "model.json").read_text())["dp"]
    assert dp["pretrained"].endswith("public/train") and dp["epsilon"]["prv"] <= 20.5
    assert "private half of the patients" in (out / "report.md").read_text()
