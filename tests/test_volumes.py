"""3D volumes as data (``diffaudit.data.volumes``): NIfTI files written here with nibabel, preprocessed by MONAI's
transforms into uint8 [N, 1, D, H, W], cached in a memory map with the hashes that rebuild and check it."""

import gzip

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
pytest.importorskip("monai")

from diffaudit.data.volumes import (  # noqa: E402
    VolumeSteps,
    check_sources,
    list_volumes,
    medmnist3d_volumes,
    write_volume_cache,
)
from diffaudit.data.volumes.steps import Unloadable, load, preprocess  # noqa: E402
from diffaudit.errors import DiffauditError  # noqa: E402


def _nifti(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.eye(4) * 2 if affine is None else affine), path)
    return path


def test_a_volume_stored_left_to_right_is_turned_to_ras():
    data = np.zeros((4, 6, 8), dtype=np.float32)
    data[0, 2, 3] = 100.0  # x index 0 with a negative x axis: the patient's rightmost voxel column
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = _nifti(Path(tmp) / "las.nii.gz", data, affine)
        out, source = preprocess(load(path), VolumeSteps(size=(4, 6, 8)))
    assert source == {"shape": [4, 6, 8], "spacing": [2.0, 2.0, 2.0], "orientation": "LAS"}
    assert out.dtype == np.uint8 and out.shape == (1, 4, 6, 8)
    assert np.unravel_index(out.argmax(), out.shape) == (0, 3, 2, 3)  # RAS+: the right end is the last x index
    assert out.max() == 255 and np.count_nonzero(out) == 1  # percentiles 0.5-99.5 onto 0..255, clipped


def test_resampling_to_a_spacing_keeps_the_anatomy_s_scale(tmp_path):
    data = np.zeros((32, 32, 32), dtype=np.float32)
    data[8:24, 8:24, 8:24] = 1.0  # a 32-mm cube at 2 mm
    path = _nifti(tmp_path / "cube.nii", data)
    steps = VolumeSteps(size=(16, 16, 16), spacing=(4.0, 4.0, 4.0))
    out, _ = preprocess(load(path), steps)
    inside = np.argwhere(out[0] > 127)
    assert out.shape == (1, 16, 16, 16)
    assert all(7 <= n <= 9 for n in inside.max(0) - inside.min(0) + 1)  # 8 voxels of 4 mm
    assert [s["transform"] for s in steps.record()] == ["LoadImage", "Orientation", "Spacing", "ResizeWithPadOrCrop",
                                                        "ScaleIntensityRangePercentiles", "round to uint8"]
    squeezed, _ = preprocess(load(path), VolumeSteps(size=(8, 8, 8), fit="resize"))
    assert squeezed.shape == (1, 8, 8, 8) and 3 <= np.count_nonzero(squeezed[0, :, 4, 4] > 127) <= 5


def test_bad_volumes_are_refused_with_the_reason():
    vol = np.ones((6, 6, 6), dtype=np.float32)
    vol[1, 2, 3] = np.nan
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(Unloadable, match="1 NaN or infinite voxels"):
            preprocess(load(_nifti(Path(tmp) / "nan.nii", vol)), VolumeSteps(size=(6, 6, 6)))
        four = _nifti(Path(tmp) / "4d.nii", np.random.default_rng(0).random((6, 6, 6, 3)))
        with pytest.raises(Unloadable, match=r"4D image of 3 volumes; pass volume_index \(--volume-index K\)"):
            preprocess(load(four), VolumeSteps(size=(6, 6, 6)))
        with pytest.raises(Unloadable, match="past its 3 volumes"):
            preprocess(load(four), VolumeSteps(size=(6, 6, 6), volume_index=3))
        out, source = preprocess(load(four), VolumeSteps(size=(6, 6, 6), volume_index=2))
        assert out.shape == (1, 6, 6, 6) and source["volumes"] == 3
        (Path(tmp) / "bad.nii.gz").write_bytes(gzip.compress(b"not a nifti header at all" * 20)[:40])
        with pytest.raises(Unloadable, match="truncated or corrupt NIfTI"):
            load(Path(tmp) / "bad.nii.gz")
    for size in [(0, 32, 32), (32, 32), (100000, 32, 32)]:
        with pytest.raises(DiffauditError, match="is not D,H,W with each between 1 and 1024"):
            VolumeSteps(size=size)
    with pytest.raises(DiffauditError, match="spacing"):
        VolumeSteps(size=(8, 8, 8), spacing=(1.0, 0.0, 1.0))


def test_the_cache_streams_volumes_into_a_memory_map_with_the_hashes_that_check_it(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    rng = np.random.default_rng(1)
    for k in range(3):
        _nifti(root / f"sub-{k}.nii.gz", rng.random((10, 12, 8)) * 1000)
    (root / "notes.txt").write_text("ignored")
    names = list_volumes(root)
    assert names == ["sub-0.nii.gz", "sub-1.nii.gz", "sub-2.nii.gz"]
    steps = VolumeSteps(size=(8, 8, 8))
    out = tmp_path / "run" / "volumes.npy"
    record = write_volume_cache(root, names, steps, out, progress=False)
    cached = np.load(out, mmap_mode="r")
    assert cached.shape == (3, 1, 8, 8, 8) and cached.dtype == np.uint8 and record["shape"] == [3, 1, 8, 8, 8]
    direct, _ = preprocess(load(root / "sub-1.nii.gz"), steps)
    assert np.array_equal(cached[1], direct)  # row i is volume i, as preprocessed alone
    import hashlib

    assert record["sha256"] == hashlib.sha256(np.ascontiguousarray(cached).tobytes()).hexdigest()
    assert [f["file"] for f in record["files"]] == names and all(len(f["sha256"]) == 64 for f in record["files"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["volumes.npy"]  # no temporary file left
    check_sources(root, record)
    _nifti(root / "sub-1.nii.gz", rng.random((10, 12, 8)))
    with pytest.raises(DiffauditError, match=r"sub-1.nii.gz changed since the run was prepared"):
        check_sources(root, record)
    (root / "sub-0.nii.gz").unlink()  # checked in order: the first listed file is missing
    with pytest.raises(DiffauditError, match=r"sub-0.nii.gz is listed in the manifest but missing"):
        check_sources(root, record)


def test_an_unreadable_volume_is_named_or_skipped_and_recorded(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for k in range(3):
        _nifti(root / f"v{k}.nii", np.random.default_rng(k).random((8, 8, 8)))
    (root / "v1.nii").write_bytes((root / "v1.nii").read_bytes()[:200])  # truncated
    names = list_volumes(root)
    out = tmp_path / "run" / "volumes.npy"
    with pytest.raises(DiffauditError, match=r"v1.nii: truncated or corrupt NIfTI .*\(1 of 3 files could not be read; "
                                             r"fix or remove them, or pass --skip-unreadable\)"):
        write_volume_cache(root, names, VolumeSteps(size=(8, 8, 8)), out, progress=False)
    assert not out.parent.exists() or not any(out.parent.iterdir())  # nothing half-written
    record = write_volume_cache(root, names, VolumeSteps(size=(8, 8, 8)), out, skip_unreadable=True, progress=False)
    assert [f["file"] for f in record["files"]] == ["v0.nii", "v2.nii"] and record["skipped"][0]["file"] == "v1.nii"
    assert np.load(out, mmap_mode="r").shape == (2, 1, 8, 8, 8)
    assert sorted(p.name for p in out.parent.iterdir()) == ["volumes.npy"]


def test_folders_without_enough_volumes_are_refused(tmp_path):
    with pytest.raises(DiffauditError, match="holds 0 NIfTI volume"):
        list_volumes(tmp_path)
    _nifti(tmp_path / "one.nii", np.zeros((4, 4, 4)))
    with pytest.raises(DiffauditError, match="holds 1 NIfTI volume"):
        list_volumes(tmp_path)


def test_medmnist_3d_arrays_are_given_in_the_canonical_form(tmp_path):
    np.savez(tmp_path / "organ3d.npz", train_images=np.zeros((3, 8, 8, 8), np.uint8))
    assert medmnist3d_volumes(tmp_path / "organ3d.npz").shape == (3, 1, 8, 8, 8)
    np.savez(tmp_path / "flat.npz", train_images=np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(DiffauditError, match="is it a 2D MedMNIST file"):
        medmnist3d_volumes(tmp_path / "flat.npz")


# ---- patients, splits and attributes ------------------------------------------------------------------------------
def test_a_patient_s_volumes_stay_in_one_split_and_the_split_is_seeded(tmp_path):
    from diffaudit.data.volumes.patients import IXI_PATIENT, patients_of, split_volumes

    names = [f"IXI{p:03d}-HH-{s}_T{t}.nii.gz" for p in range(30) for s, t in ((p, 1), (p + 1000, 2))]
    patients = patients_of(names, IXI_PATIENT)
    assert patients[:2] == ["IXI000", "IXI000"] and len(set(patients)) == 30
    splits = split_volumes(tmp_path, names, patients=patients, seed=3)
    assert all(splits[i] == splits[i + 1] for i in range(0, 60, 2))  # both scans of a patient together
    assert [splits.count(s) for s in ("train", "val", "test")] == [48, 6, 6]
    assert split_volumes(tmp_path, names, patients=patients, seed=3) == splits
    assert split_volumes(tmp_path, names, patients=patients, seed=4) != splits
    with pytest.raises(DiffauditError, match=r"scan7.nii: --patient-pattern .* finds no patient ID"):
        patients_of(["IXI001_T1.nii", "scan7.nii"], IXI_PATIENT)
    with pytest.raises(DiffauditError, match="needs exactly one group"):
        patients_of(names, r"IXI\d+")


def test_attributes_are_read_by_scan_and_missing_rows_listed(tmp_path):
    from diffaudit.data.volumes.patients import attributes_for, read_attributes

    (tmp_path / "demog.csv").write_text("MRID,Age,Sex\nIXI012-HH-1211,38.78,M\nIXI013-HH-1212,46.71,F\n")
    table = read_attributes(tmp_path / "demog.csv")
    found, missing = attributes_for(["IXI012-HH-1211_T1.nii.gz", "IXI099-IOP-9_T1.nii.gz"], table)
    assert found[0] == {"Age": "38.78", "Sex": "M"} and found[1] is None and missing == ["IXI099-IOP-9_T1.nii.gz"]
    (tmp_path / "twice.csv").write_text("MRID,Age,Sex\nA,1,M\nA,2,F\n")
    with pytest.raises(DiffauditError, match="line 3: MRID A appears twice"):
        read_attributes(tmp_path / "twice.csv")
    (tmp_path / "nokey.csv").write_text("ID,Age\nA,1\n")
    assert read_attributes(tmp_path / "nokey.csv") == {"A": {"Age": "1"}}  # keyed by the first column
    with pytest.raises(DiffauditError, match="has no 'MRID' column"):
        read_attributes(tmp_path / "nokey.csv", key="MRID")
    # a scan named by its whole file name, or by its patient
    found, _ = attributes_for(["A.nii.gz", "scan9.nii"], {"A": {"Age": "1"}, "P9": {"Age": "2"}}, ["PA", "P9"])
    assert found == [{"Age": "1"}, {"Age": "2"}]
