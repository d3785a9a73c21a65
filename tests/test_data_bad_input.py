"""Hostile input on the ``--data`` surface, at the command line: every bad folder, file or option value is refused
with exit code 2 and one ``error:`` line that names the file and the fix, and leaves nothing behind (no run folder
made, no ``data/images.npy``, no ``manifest.json``, no temporary file; an existing run as it was). Mixed sizes are
no error: they are resized and said once. Unreadable files are skipped, and recorded, with ``--skip-unreadable``.

Every test writes its own tiny synthetic files (16x16 images) under ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffaudit.cli import main


# ---- running the command line ----------------------------------------------------------------------------------
def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def snapshot(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under ``root``, with the size and modification time of each file (a folder's own time changes
    with the run lock's PID file, which comes and goes)."""
    return {p.relative_to(root).as_posix(): None if p.is_dir() and not p.is_symlink()
            else (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


def refused(capsys, tmp_path: Path, *argv, match, command: str = "prepare", run_dir: Path | None = None) -> str:
    """``command`` exits 2 with one ``error:`` line (the last; any line before it is a progress note) holding every
    fragment of ``match``, and leaves every file under ``tmp_path`` as it was. Returns the error line."""
    run_dir = tmp_path / "run" if run_dir is None else run_dir
    before = snapshot(tmp_path)
    code, err = run(capsys, command, "--run-dir", run_dir, "--quiet", *argv)
    lines = err.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert code == 2 and len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err and not any(line.startswith("warning") for line in lines), err
    for m in [match] if isinstance(match, str) else match:
        assert m in errors[0], err
    assert snapshot(tmp_path) == before, "a refused command left files behind or changed them"
    return errors[0]


# ---- tiny synthetic files --------------------------------------------------------------------------------------
def grey(seed: int, h: int = 16, w: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def pngs(root: Path, n: int = 10) -> Path:
    """``n`` distinct 8-bit 16x16 PNGs 00.png, 01.png, ... in ``root``."""
    for i in range(n):
        save(root / f"{i:02d}.png", grey(i))
    return root


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_dicom(path: Path, pixels: np.ndarray, *, patient: str = "P1", slope: float | None = None,
                intercept: float | None = None, window: tuple[float, float] | None = None) -> Path:
    """A 16-bit MONOCHROME2 CT file of ``pixels`` [H, W], Explicit VR Little Endian."""
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CT", patient
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def dicoms(root: Path, n: int = 10) -> Path:
    """``n`` CT files 00.dcm, ... of distinct patients, 12-bit values rescaled to Hounsfield units."""
    for i in range(n):
        write_dicom(root / f"{i:02d}.dcm", np.random.default_rng(i).integers(0, 4096, (16, 16)), patient=f"P{i}",
                    slope=1.0, intercept=-1024.0, window=(40, 400) if i % 2 else None)
    return root


def write_pixelless(path: Path, sop_class: str) -> Path:
    """A DICOM object of ``sop_class`` with no pixel data (a report, a segmentation without its frames)."""
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.SOPClassUID, ds.SOPInstanceUID = meta, sop_class, meta.MediaStorageSOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def volumes(root: Path, n: int = 10, *, nan_in: int | None = None, suffix: str = ".nii.gz") -> Path:
    """``n`` NIfTI volumes 8x8x4 (v0, v1, ...); ``nan_in``: the volume given one NaN voxel."""
    nib = pytest.importorskip("nibabel")
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        vol = np.random.default_rng(i).normal(500, 100, (8, 8, 4)).astype(np.float32)
        if i == nan_in:
            vol[1, 1, 1] = np.nan
        nib.Nifti1Image(vol, np.eye(4)).to_filename(root / f"v{i}{suffix}")
    return root


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


# ---- the builders: each writes its data under tmp_path/data and returns the --data path ---------------------------
def empty_folder(d: Path) -> Path:
    d.mkdir()
    return d


def one_image(d: Path) -> Path:
    save(d / "only.png", grey(0))
    return d


def corrupt_png(d: Path) -> Path:
    (pngs(d) / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage, not a chunk")
    return d


def truncated_pngs(d: Path) -> Path:
    pngs(d)
    for name, keep in (("cut.png", 120), ("cut2.png", 60)):
        (d / name).write_bytes((d / "00.png").read_bytes()[:keep])
    return d


def bad_crc_png(d: Path) -> Path:
    data = bytearray((pngs(d) / "00.png").read_bytes())
    data[-20] ^= 0xFF  # a byte of the image data: its CRC no longer matches
    (d / "crc.png").write_bytes(bytes(data))
    return d


def empty_png(d: Path) -> Path:
    (pngs(d) / "zero.png").write_bytes(b"")
    return d


def truncated_dicoms(d: Path) -> Path:
    dicoms(d)
    full = (d / "00.dcm").read_bytes()
    (d / "cut_a.dcm").write_bytes(full[:-200])  # in its pixel data
    (d / "cut_b.dcm").write_bytes(full[:-100])
    return d


def dicom_cut_in_header(d: Path) -> Path:
    dicoms(d)
    (d / "cut.dcm").write_bytes((d / "00.dcm").read_bytes()[:500])  # before its pixel data starts
    return d


def docx_in_folder(d: Path) -> Path:
    (pngs(d) / "notes.docx").write_bytes(b"PK\x03\x04" + bytes(range(32)))
    return d


def bin_in_folder(d: Path) -> Path:
    (pngs(d) / "blob.bin").write_bytes(bytes(range(64)))
    return d


def structured_report(d: Path) -> Path:
    write_pixelless(dicoms(d) / "report.dcm", "1.2.840.10008.5.1.4.1.1.88.11")  # Basic Text SR
    return d


def segmentation(d: Path) -> Path:
    write_pixelless(dicoms(d) / "seg.dcm", "1.2.840.10008.5.1.4.1.1.66.4")  # Segmentation Storage
    return d


def nifti_with_nan(d: Path) -> Path:
    return volumes(d, nan_in=3)


def truncated_nifti(d: Path) -> Path:
    volumes(d)
    truncate(d / "v0.nii.gz", (d / "v0.nii.gz").stat().st_size // 2)
    return d


def decompression_bomb(d: Path) -> Path:
    """A 60-byte PNG whose header claims 30000 x 30000 grey pixels (900 megapixels, ten times PIL's limit)."""
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    (pngs(d) / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b""))
                                       + _chunk(b"IEND", b""))
    return d


def symlink_out(d: Path) -> Path:
    pngs(d)
    os.symlink(save(d.parent / "elsewhere" / "secret.png", grey(50)), d / "link.png")
    return d


def dangling_symlink(d: Path) -> Path:
    os.symlink(pngs(d) / "gone.png", d / "dangling.png")
    return d


def labels_missing_rows(d: Path) -> Path:
    (pngs(d) / "labels.csv").write_text("file,label\n" + "".join(f"{i:02d}.png,{i % 2}\n" for i in range(8)))
    return d


def labels_extra_rows(d: Path) -> Path:
    (pngs(d) / "labels.csv").write_text("file,label\n" + "".join(f"{i:02d}.png,{i % 2}\n" for i in range(12)))
    return d


def datalist_csv_twice(d: Path) -> Path:
    rows = "".join(f"{i:02d}.png,{'train' if i < 8 else 'test'}\n" for i in range(10))
    (pngs(d) / "list.csv").write_text("file,split\n" + rows + "03.png,test\n")
    return d / "list.csv"


def datalist_json_twice(d: Path) -> Path:
    lists = {"training": [f"{i:02d}.png" for i in range(8)], "test": ["08.png", "09.png", "00.png"]}
    (pngs(d) / "list.json").write_text(json.dumps(lists))
    return d / "list.json"


def datalist_missing_file(d: Path) -> Path:
    rows = "".join(f"{i:02d}.png,{'train' if i < 8 else 'test'}\n" for i in range(10))
    (pngs(d) / "list.csv").write_text("file,split\n" + rows + "gone.png,test\n")
    return d / "list.csv"


def several_kinds(d: Path) -> Path:
    pngs(d)
    write_dicom(d / "scan.dcm", np.ones((16, 16)))
    return d


def rgb_folder(d: Path) -> Path:
    for i in range(10):
        save(d / f"{i:02d}.png", np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    return d


def missing_path(d: Path) -> Path:
    return d / "nowhere"


def unknown_kind(d: Path) -> Path:
    d.mkdir()
    (d / "scans.xyz").write_bytes(b"not a source")
    return d / "scans.xyz"


# (id, builder, extra options, fragments of the error line; {data} is the --data path, {root} the data folder)
CASES = [
    ("empty folder", empty_folder, [], "{data} holds no images"),
    ("one image", one_image, [], ["too few to split: 1 images", "(under {data})", "--split-ratios"]),
    ("corrupt png", corrupt_png, [], ["{data}/bad.png: truncated or corrupt image", "1 of 11 files", "--skip-unreadable"]),
    ("truncated png", truncated_pngs, [], ["{data}/cut.png: truncated or corrupt image", "2 of 12 files",
                                           "--skip-unreadable"]),
    ("png with a bad crc", bad_crc_png, [], ["{data}/crc.png: truncated or corrupt image", "1 of 11 files"]),
    ("empty png", empty_png, [], ["{data}/zero.png: not an image file PIL can read", "1 of 11 files"]),
    ("truncated dicom", truncated_dicoms, [], ["{data}/cut_a.dcm: its pixel data cannot be decoded", "2 of 12 files",
                                               "--skip-unreadable"]),
    ("dicom cut in its header", dicom_cut_in_header, [], ["{data}/cut.dcm: it holds no pixel data (CT Image Storage); "
                                                          "the file is truncated or damaged", "1 of 11 files"]),
    ("docx among images", docx_in_folder, [], ["{data}/notes.docx: not a file the folder source reads",
                                               "1 of 11 files", "remove them", "--skip-unreadable"]),
    ("bin among images", bin_in_folder, [], ["{data}/blob.bin: not a file the folder source reads", "1 of 11 files"]),
    ("dicom structured report", structured_report, [], ["{data}/report.dcm: it holds no pixel data "
                                                        "(Basic Text SR Storage); it is not an image", "1 of 11 files"]),
    ("dicom segmentation", segmentation, [], ["{data}/seg.dcm: it is a segmentation (SEG), not an image"]),
    ("nifti with nan", nifti_with_nan, [], ["{data}/v3.nii.gz: it holds 1 NaN or infinite voxels; replace them",
                                            "1 of 10 files"]),
    ("truncated nifti", truncated_nifti, [], ["{data}/v0.nii.gz: truncated or corrupt gzip", "1 of 10 files"]),
    ("decompression bomb", decompression_bomb, [], ["{data}/bomb.png: its header claims more pixels than PIL's "
                                                    "decompression-bomb limit", "refused unread", "1 of 11 files"]),
    ("symlink out of the root", symlink_out, [], ["{data}/link.png is a symlink to", "secret.png, outside the data root",
                                                  "remove the link"]),
    ("dangling symlink", dangling_symlink, [], ["{data}/dangling.png: missing, or a broken link", "1 of 11 files"]),
    ("labels missing rows", labels_missing_rows, ["--labels", "labels.csv"],
     ["08.png has no row in {data}/labels.csv (2 images lack one)", "add a row for each image"]),
    ("labels extra rows", labels_extra_rows, ["--labels", "labels.csv"],
     ["{data}/labels.csv names 10.png, which is not an image under the data root (2 such rows)", "remove those rows"]),
    ("labels table missing", pngs, ["--labels", "nothere.csv"],
     ["the labels table {data}/nothere.csv does not exist", "--labels"]),
    ("labels table outside the root", pngs, ["--labels", "../labels.csv"], ["../labels.csv lies outside the data root"]),
    ("datalist csv names a file twice", datalist_csv_twice, [], ["{data} names 03.png twice (rows 5 and 12)",
                                                                 "keep one row per file"]),
    ("datalist json names a file twice", datalist_json_twice, [], ["{data} names 00.png twice", "training[0]", "test[2]",
                                                                   "keep one entry per file"]),
    ("datalist names a missing file", datalist_missing_file, [], ["{root}/gone.png: missing", "1 of 11 files"]),
    ("several kinds in one folder", several_kinds, [], ["{data} holds files of several kinds (10 folder, 1 dicom)",
                                                        "--data-format"]),
    ("size 0", pngs, ["--size", 0], "size must be between 8 and 1024 pixels (--size), got 0"),
    ("size 100000", pngs, ["--size", 100000], "size must be between 8 and 1024 pixels (--size), got 100000"),
    ("slice past the volume", volumes, ["--slice", "2:500"], ["slice index 500 is past axis 2 of {data}/v0.nii.gz "
                                                              "(4 slices)", "--slice 2:K", "K below 4"]),
    ("slice of no such axis", volumes, ["--slice", "7:mid"], ["argument --slice", "AXIS 0, 1 or 2", "'7:mid'"]),
    ("missing path", missing_path, [], ["{data} does not exist", "pass the folder or file that holds the images"]),
    ("file of unknown kind", unknown_kind, [], ["{data} is not a file kind diffaudit reads", "--data-format"]),
    ("window of one number", pngs, ["--window", "40"], ["argument --window", "CENTER,WIDTH", "'40'"]),
    ("window of width 0", pngs, ["--window", "40,0"], "CENTER,WIDTH with a width of at least 1 (--window)"),
    ("ratios summing to 1.5", pngs, ["--split-ratios", "0.5,0.5,0.5"], ["summing to 1", "(--split-ratios)"]),
    ("dataset and data together", pngs, ["--dataset", "breastmnist"], "give --dataset (a MedMNIST flag) or --data"),
    ("n-train beyond the split", pngs, ["--n-train", 1000], ["N_D = 1000 but the train split of {data} has 8 images",
                                                             "--n-train between 1 and 8"]),
    ("rgb with one channel", rgb_folder, ["--channels", 1], ["{data}/00.png is a colour image", "--channels 3"]),
]


@pytest.mark.parametrize("build, extra, match", [pytest.param(b, e, m, id=i) for i, b, e, m in CASES])
def test_bad_input_is_one_error_line_and_leaves_nothing(capsys, tmp_path, build, extra, match):
    root = tmp_path / "data"
    data = build(root)
    fragments = [m.format(data=data, root=root) for m in ([match] if isinstance(match, str) else match)]
    refused(capsys, tmp_path, "--data", data, *extra, match=fragments)
    assert not (tmp_path / "run").exists()


# ---- an existing run is left as it was ---------------------------------------------------------------------------
def test_an_existing_run_is_untouched(capsys, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "data").mkdir(parents=True)
    (run_dir / "notes.txt").write_text("mine")
    np.save(run_dir / "data" / "images.npy", np.zeros((2, 1, 16, 16), np.uint8))  # a cache no manifest names
    refused(capsys, tmp_path, "--data", truncated_pngs(tmp_path / "data"), match="cut.png", run_dir=run_dir)
    # a run prepared from good data keeps its manifest and cache when another --data is refused
    good = pngs(tmp_path / "good")
    other = tmp_path / "other"
    assert run(capsys, "prepare", "--run-dir", other, "--quiet", "--data", good)[0] == 0
    refused(capsys, tmp_path, "--data", corrupt_png(tmp_path / "bad"), match="use another --run-dir", run_dir=other)
    refused(capsys, tmp_path, "--data", good, "--slice", "7:mid", match="argument --slice", run_dir=other)


# ---- the other commands that read --data -------------------------------------------------------------------------
def test_export_refuses_as_prepare_does(capsys, tmp_path):
    refused(capsys, tmp_path, "--data", truncated_pngs(tmp_path / "data"), command="export",
            match=["cut.png: truncated or corrupt image", "2 of 12 files", "--skip-unreadable"])
    refused(capsys, tmp_path, "--data", rgb_folder(tmp_path / "rgb"), "--channels", 1, command="export",
            match="--channels 3")


@pytest.mark.parametrize("command, run_option", [("audit", "--run-dir"), ("sweep", "--out")])
def test_audit_and_sweep_refuse_before_preparing_anything(capsys, tmp_path, command, run_option):
    """No prepared image nor manifest; a new audit folder is removed whole (a sweep keeps its own record)."""
    data = truncated_pngs(tmp_path / "data")
    out = tmp_path / "out"
    code, err = run(capsys, command, run_option, out, "--quiet", "--data", data)
    errors = [line for line in err.strip().splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and "cut.png: truncated or corrupt image" in errors[0], err
    assert not list(out.rglob("images.npy")) and not list(out.rglob("manifest.json"))
    if command == "audit":
        assert not out.exists()


# ---- not errors --------------------------------------------------------------------------------------------------
def test_mixed_sizes_are_resized_and_said_once(capsys, tmp_path):
    data = pngs(tmp_path / "data")
    save(data / "big.png", grey(99, 32, 32))
    code, err = run(capsys, "prepare", "--run-dir", tmp_path / "run", "--quiet", "--data", data)
    said = [line for line in err.splitlines() if "sizes differ" in line]
    assert code == 0 and "error:" not in err, err
    assert len(said) == 1 and "16x16" in said[0] and "big.png at 32x32" in said[0], err
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["preprocessing"]["mixed_sizes"] and manifest["image_shape"] == [1, 16, 16]


def test_grey_stored_as_rgb_takes_one_channel(capsys, tmp_path):
    data = tmp_path / "data"
    for i in range(10):
        save(data / f"{i:02d}.png", np.dstack([grey(i)] * 3))
    code, err = run(capsys, "prepare", "--run-dir", tmp_path / "run", "--quiet", "--data", data, "--channels", 1)
    assert code == 0, err


@pytest.mark.parametrize("build, skipped", [(truncated_pngs, {"cut.png": "truncated", "cut2.png": "truncated"}),
                                            (truncated_dicoms, {"cut_a.dcm": "cannot be decoded",
                                                                "cut_b.dcm": "cannot be decoded"}),
                                            (structured_report, {"report.dcm": "not an image"})],
                         ids=["png", "dicom", "dicom report"])
def test_skip_unreadable_goes_on_and_records_what_it_skipped(capsys, tmp_path, build, skipped):
    data = build(tmp_path / "data")
    code, err = run(capsys, "prepare", "--run-dir", tmp_path / "run", "--quiet", "--data", data, "--skip-unreadable")
    assert code == 0 and "error:" not in err, err
    assert f"{len(skipped)} unreadable files skipped" in err
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    recorded = {s["path"]: s["reason"] for s in manifest["source"]["skipped"]}
    assert set(recorded) == set(skipped)
    assert all(why in recorded[name] for name, why in skipped.items()), recorded
    assert len(manifest["source"]["records"]) == 10 and manifest["config"]["skip_unreadable"] is True


def test_a_dicom_folder_is_prepared_through_the_command_line(capsys, tmp_path):
    data = dicoms(tmp_path / "dicom")
    code, err = run(capsys, "prepare", "--run-dir", tmp_path / "run", "--quiet", "--data", data, "--n-train", 6)
    assert code == 0 and "error:" not in err, err
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    records = manifest["source"]["records"]
    assert manifest["dataset"] == "dicom:dicom" and manifest["source"]["kind"] == "dicom"
    assert sorted(r["path"] for r in records) == [f"{i:02d}.dcm" for i in range(10)]
    assert {r["patient"] for r in records} == {f"P{i}" for i in range(10)}
    assert all(r["kind"] == "dicom" and len(r["sha256"]) == 64 and r["shape"] == [1, 16, 16] for r in records)
    assert manifest["n_train"] == 6 and manifest["image_shape"] == [1, 16, 16]
    assert manifest["cache"]["shape"] == [10, 1, 16, 16] and manifest["source"]["skipped"] == []
    assert manifest["preprocessing"]["rules"] == {"file window": 5, "percentiles": 5}
    images = np.load(tmp_path / "run" / "data" / "images.npy")
    assert images.dtype == np.uint8 and images.shape == (10, 1, 16, 16) and images.max() > 200
