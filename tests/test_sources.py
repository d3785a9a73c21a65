"""Data sources: folders of images, DICOM, NIfTI, datalists and MedMNIST files, read into records and prepared.

Every test writes its own small synthetic files; pydicom's own CT_small.dcm is the one real file.
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

from conftest import write_synthetic_medmnist
from diffaudit.data.sources import (Decoded, Source, SourceOptions, assign_splits, check_sources, detect_format,
                                    duplicate_groups, load_images, open_source, prepare_cache, split_indices,
                                    training_indices, twins, without_twins)
from diffaudit.data.sources.intensity import linear_window, to_display
from diffaudit.errors import DiffauditError

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")


def quiet(_: str) -> None:
    pass


def opened(path, **kw) -> Source:
    return open_source(path, log=quiet, workers=2, **kw)


def grey(seed: int, h: int = 16, w: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def save(path: Path, array: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return path


def close(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal up to one grey level (float32 here, float64 in the reference: a value at .5 may round either way)."""
    d = np.abs(np.asarray(a, float) - np.asarray(b, float))
    return a.shape == b.shape and d.max() <= 1 and d.mean() < 0.05


def percentile_uint8(x: np.ndarray) -> np.ndarray:
    """MONAI's ScaleIntensityRangePercentiles(0.5, 99.5, 0, 255, clip=True), then rounded."""
    lo, hi = np.percentile(x, (0.5, 99.5))
    return np.clip(np.rint(np.clip((x - lo) / (hi - lo) * 255, 0, 255)), 0, 255).astype(np.uint8)


@pytest.fixture
def classes(tmp_path) -> Path:
    """Class subfolders a/ and b/ of five 8-bit 16x16 PNGs each."""
    root = tmp_path / "classes"
    for c in "ab":
        for i in range(5):
            save(root / c / f"{i}.png", grey(10 * ord(c) + i))
    return root


# ---- folders of images -------------------------------------------------------------------------------------------
def test_class_folders_and_8bit_unchanged(classes):
    src = opened(classes)
    assert src.kind == "folder" and src.classes == ("a", "b") and len(src) == 10
    assert [r.label for r in src] == [0] * 5 + [1] * 5 and src.records[0].path == "a/0.png"
    x = load_images(src, size=16, channels=1)
    expected = np.stack([grey(10 * ord(c) + i) for c in "ab" for i in range(5)])[:, None]
    assert x.dtype == np.uint8 and np.array_equal(x, expected)  # 8-bit passes bit for bit
    assert load_images(src, size=16, channels=3).shape == (10, 3, 16, 16)


def test_image_modes(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    deep = rng.integers(0, 65536, (16, 16), dtype=np.uint16)
    root = tmp_path / "modes"
    save(root / "rgb.png", rgb)
    save(root / "rgba.png", np.dstack([rgb, np.full((16, 16), 128, np.uint8)]))
    save(root / "deep.png", deep)
    smooth = np.dstack([np.add.outer(np.arange(16), np.arange(16)).astype(np.uint8) * k for k in (4, 6, 8)])
    save(root / "photo.jpg", smooth, quality=95)
    save(root / "scan.tif", grey(1))
    save(root / "scan.bmp", grey(2))
    src = opened(root)
    assert len(src) == 6 and src.classes is None
    x = {r.path: img for r, img in zip(src, load_images(src, size=16, channels=3))}
    assert np.array_equal(x["rgb.png"], rgb.transpose(2, 0, 1))
    assert np.array_equal(x["rgba.png"], x["rgb.png"])  # alpha dropped
    assert close(x["deep.png"][0], percentile_uint8(deep.astype(np.float64)))  # 16-bit: percentiles
    assert np.array_equal(x["scan.tif"], np.repeat(grey(1)[None], 3, 0))
    assert np.abs(x["photo.jpg"].astype(int) - smooth.transpose(2, 0, 1)).mean() < 4  # lossy, the same picture
    with pytest.raises(DiffauditError, match="colour image but channels=1"):
        load_images(src, size=16, channels=1)
    save(root / "greyrgb" / "g.png", np.dstack([grey(3)] * 3))  # grey stored as RGB becomes grey losslessly
    assert np.array_equal(load_images(opened(root / "greyrgb"), size=16, channels=1)[0, 0], grey(3))


def test_percentiles_as_monai_and_windows():
    x = np.random.default_rng(1).normal(100, 40, (1, 32, 32)).astype(np.float32)
    y, rule = to_display(Decoded(x))
    assert rule == "percentiles"
    assert close(np.rint(y).astype(np.uint8), percentile_uint8(x.astype(np.float64)))
    y, rule = to_display(Decoded(x), window=(100, 81))  # linear: 59.5 -> 0, 139.5 -> 255
    lo, hi = linear_window(100, 81)
    assert (lo, hi) == (59.5, 139.5) and rule == "window"
    assert np.allclose(y, np.clip((x - lo) / (hi - lo) * 255, 0, 255), atol=1e-3)
    assert np.array_equal(to_display(Decoded(np.full((1, 4, 4), 7.0, np.float32)))[0], np.zeros((1, 4, 4)))


def test_geometry_fit_and_mixed_sizes(tmp_path):
    root = tmp_path / "mixed"
    wide = np.zeros((8, 16), np.uint8)
    wide[:, 4:12] = 200
    save(root / "wide.png", wide)
    for i in range(3):
        save(root / f"sq{i}.png", grey(i, 32, 32))
    src = opened(root)
    lines = []
    prepared = prepare_cache(src, tmp_path / "c.npy", size=8, channels=1, progress=False, log=lines.append)
    assert len(lines) == 1 and "sizes differ" in lines[0] and "wide.png" in lines[0]
    assert prepared.preprocessing["mixed_sizes"] and prepared.preprocessing["input_sizes"] == {"32x32": 3, "8x16": 1}
    crop = load_images(src, size=8, channels=1)
    pad = load_images(src, size=8, channels=1, fit="pad")
    assert crop[-1, 0].min() == 200  # the centred 8x8 of the wide image is all bright
    assert pad[-1, 0, :2].max() == 0 and pad[-1, 0, 4, 4] == 200  # black bars above and below, resized 16 -> 8
    assert close(crop[0, 0], grey(0, 32, 32).reshape(8, 4, 8, 4).mean((1, 3)).round())  # area average


@pytest.mark.parametrize("size", [0, 100000, -3, 8.0])
def test_size_refused(classes, size):
    src = opened(classes)
    with pytest.raises(DiffauditError, match=r"size .* is outside 1\.\.8192"):
        load_images(src, size=size, channels=1)
    with pytest.raises(DiffauditError, match="outside 1..8192"):
        prepare_cache(src, classes.parent / "c.npy", size=size, channels=1, progress=False, log=quiet)


def test_labels_csv(classes, tmp_path):
    root = tmp_path / "flat"
    for i in range(4):
        save(root / f"{i}.png", grey(i))
    (root / "labels.csv").write_text("file,label,patient\n0.png,tumour,p1\n1.png,normal,p1\n2.png,tumour,p2\n"
                                     "3.png,normal,p3\n")
    src = opened(root)
    assert src.classes == ("normal", "tumour") and [r.label for r in src] == [1, 0, 1, 0]
    assert [r.patient for r in src] == ["p1", "p1", "p2", "p3"]
    (root / "labels.csv").write_text("file,label\n0.png,1\n1.png,0\n2.png,1\n")
    with pytest.raises(DiffauditError, match=r"3.png has no row in .*labels.csv \(1 images lack one\)"):
        opened(root)
    (root / "labels.csv").write_text("file,label\n0.png,1\n1.png,0\n2.png,1\n3.png,0\n4.png,1\n")
    with pytest.raises(DiffauditError, match="names 4.png, which is not an image"):
        opened(root)
    (root / "labels.csv").write_text("file,label\n0.png,1\n1.png,0\n2.png,1\n3.png,0\n./0.png,1\n")
    with pytest.raises(DiffauditError, match=r"names 0.png twice \(rows 2 and 6\)"):
        opened(root)
    (root / "labels.csv").write_text("file,lable\n0.png,1\n")
    with pytest.raises(DiffauditError, match="unknown column 'lable'"):
        opened(root)
    assert opened(classes, labels="none").classes is None


def test_split_folders(tmp_path):
    root = tmp_path / "split"
    for split, n in (("train", 4), ("val", 1), ("test", 2)):
        for i in range(n):
            save(root / split / ("a" if i % 2 else "b") / f"{split}{i}.png", grey(i))
    src = opened(root)
    assert [r.split for r in src].count("train") == 4 and src.classes == ("a", "b")
    assert assign_splits(src) is src  # given splits are kept
    assert list(training_indices(src)) == list(split_indices(src, "train"))
    save(root / "stray.png", grey(9))
    with pytest.raises(DiffauditError, match="stray.png lies outside the split folders"):
        opened(root)


# ---- refusals: bad files, links, bombs -----------------------------------------------------------------------------
def test_corrupt_and_non_image_files(classes):
    good = (classes / "a" / "0.png").read_bytes()
    (classes / "a" / "cut.png").write_bytes(good[: len(good) // 2])
    (classes / "b" / "fake.png").write_text("not a picture")
    (classes / "b" / "scan.pdf").write_bytes(b"%PDF-1.4")
    (classes / "notes.txt").write_text("ignored: a note")
    with pytest.raises(DiffauditError, match=r"a/cut.png: truncated or corrupt .*; 3 of 13 files .* skip_unreadable"):
        opened(classes)
    src = opened(classes, skip_unreadable=True)
    assert len(src) == 10 and src.ignored == ("notes.txt",)
    reasons = {s.path: s.reason for s in src.skipped}
    assert set(reasons) == {"a/cut.png", "b/fake.png", "b/scan.pdf"}
    assert "not an image file" in reasons["b/fake.png"] and "extension" in reasons["b/scan.pdf"]
    assert Source.from_dict(json.loads(json.dumps(src.to_dict()))) == src  # the manifest's form round-trips


def test_symlink_out_of_root(classes, tmp_path):
    outside = save(tmp_path / "elsewhere" / "secret.png", grey(0))
    os.symlink(outside, classes / "a" / "link.png")
    with pytest.raises(DiffauditError, match="is a symlink to .*secret.png, outside the data root"):
        opened(classes)
    (classes / "a" / "link.png").unlink()
    os.symlink(classes / "b" / "0.png", classes / "a" / "inside.png")  # a link inside the root is fine
    assert len(opened(classes)) == 11


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_decompression_bomb(classes):
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)  # claims 10^10 grey pixels, in 60 bytes
    (classes / "a" / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
                                             + _chunk(b"IDAT", zlib.compress(b"")) + _chunk(b"IEND", b""))
    max_pixels = Image.MAX_IMAGE_PIXELS
    with pytest.raises(DiffauditError, match=r"a/bomb.png: .*decompression-bomb limit.*1 of 11 files"):
        opened(classes)
    assert Image.MAX_IMAGE_PIXELS == max_pixels
    assert [s.path for s in opened(classes, skip_unreadable=True).skipped] == ["a/bomb.png"]


def test_empty_and_single_image(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffauditError, match="holds no images"):
        opened(tmp_path / "empty")
    with pytest.raises(DiffauditError, match="holds no folder files"):
        opened(tmp_path / "empty", format="folder")
    save(tmp_path / "one" / "x.png", grey(0))
    with pytest.raises(DiffauditError, match="too few to split: 1 images in 1 patients or files leave the val split"):
        assign_splits(opened(tmp_path / "one"))


# ---- splits and patients -----------------------------------------------------------------------------------------
def test_patients_stay_in_one_split(tmp_path):
    root = tmp_path / "patients"
    rows = ["file,patient"]
    for i in range(40):
        save(root / f"{i:02d}.png", grey(i, 4, 4))
        rows.append(f"{i:02d}.png,p{i % 12}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    src = opened(root)
    for seed in range(3):
        split = assign_splits(src, seed=seed)
        where = {}
        for r in split:
            assert where.setdefault(r.patient, r.split) == r.split
        counts = [len(split_indices(split, s)) for s in ("train", "val", "test")]
        assert sum(counts) == 40 and min(counts) > 0 and counts[0] >= 24
    assert assign_splits(src, seed=1) == assign_splits(src, seed=1)
    by_file = assign_splits(src, seed=0, ratios=(0.5, 0.25, 0.25), by_patient=False)
    assert [len(split_indices(by_file, s)) for s in ("train", "val", "test")] == [20, 10, 10]
    with pytest.raises(DiffauditError, match="ratios"):
        assign_splits(src, ratios=(0.5, 0.1, 0.1))


# ---- DICOM -------------------------------------------------------------------------------------------------------
def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", slope: float | None = None,
                intercept: float | None = None, patient: str = "P1", window: tuple[float, float] | None = None) -> Path:
    """A CT file of uint16 ``pixels`` [H, W] or [F, H, W] (F frames), Explicit VR Little Endian."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CT", patient
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_rescale_window_and_monochrome1(tmp_path):
    stored = np.random.default_rng(2).integers(0, 4096, (2, 16, 16)).astype(np.uint16)
    root = tmp_path / "dicom"
    write_dicom(root / "m2.dcm", stored[0], slope=2.0, intercept=-1024.0, window=(40, 400), patient="A")
    write_dicom(root / "m1.dcm", stored[0], photometric="MONOCHROME1", slope=2.0, intercept=-1024.0,
                window=(40, 400), patient="B")
    write_dicom(root / "raw", stored[1], patient="C")  # no extension, no window: percentiles of stored values
    assert detect_format(root) == "dicom"
    src = opened(root)
    assert [(r.path, r.patient) for r in src] == [("m1.dcm", "B"), ("m2.dcm", "A"), ("raw", "C")]
    x = {r.path: img[0] for r, img in zip(src, load_images(src, size=16, channels=1))}
    hu = stored[0] * 2.0 - 1024.0
    lo, hi = linear_window(40, 400)
    expected = np.rint(np.clip((hu - lo) / (hi - lo) * 255, 0, 255))
    assert np.abs(x["m2.dcm"] - expected).max() <= 1
    assert np.abs(x["m1.dcm"].astype(int) - (255 - x["m2.dcm"].astype(int))).max() <= 1  # MONOCHROME1 inverted
    assert close(x["raw"], percentile_uint8(stored[1].astype(np.float64)))
    explicit = opened(root, window=(0, 100))  # an explicit window overrides the file's
    y = load_images(explicit.select([1]), size=16, channels=1)[0, 0]
    assert np.abs(y - np.rint(np.clip((hu - linear_window(0, 100)[0]) / 99 * 255, 0, 255))).max() <= 1


def test_dicom_frames_and_ct_small(tmp_path):
    from pydicom.data import get_testdata_file

    root = tmp_path / "frames"
    write_dicom(root / "cine.dcm", np.random.default_rng(3).integers(0, 999, (3, 8, 8)))
    with pytest.raises(DiffauditError, match=r"cine.dcm holds 3 frames; pass frames='all'"):
        opened(root)
    src = opened(root, frames="all")
    assert [r.frame for r in src] == [0, 1, 2] and {r.path for r in src} == {"cine.dcm"}
    ct = Path(get_testdata_file("CT_small.dcm"))
    one = opened(ct)  # a single file is a source of one file
    assert one.records[0].shape == (1, 128, 128) and one.records[0].patient == "1CT1"
    img = load_images(one, size=64, channels=1)
    assert img.shape == (1, 1, 64, 64) and img.min() == 0 and img.max() > 240  # HU scaled by percentiles


def test_dicom_without_pixels_and_missing_codec(tmp_path):
    from pydicom.data import get_testdata_file
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    root = tmp_path / "sr"
    write_dicom(root / "ok.dcm", np.ones((8, 8)))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.11", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sr = Dataset()
    sr.file_meta, sr.SOPClassUID, sr.SOPInstanceUID = meta, meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    sr.save_as(root / "report.dcm", enforce_file_format=True)
    with pytest.raises(DiffauditError, match=r"report.dcm: it holds no pixel data \(Basic Text SR Storage\)"):
        opened(root)
    assert opened(root, skip_unreadable=True).skipped[0].path == "report.dcm"
    from pydicom.pixels import get_decoder

    jpegls = get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    if jpegls is None or get_decoder("1.2.840.10008.1.2.4.80").is_available:
        pytest.skip("a JPEG-LS decoder is installed here (or the test file is absent)")
    with pytest.raises(DiffauditError, match="JPEG-LS Lossless.*pip install pylibjpeg pylibjpeg-libjpeg"):
        opened(Path(jpegls))


# ---- NIfTI -------------------------------------------------------------------------------------------------------
def write_nifti(path: Path, volume: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(volume.astype(np.float32), np.eye(4)).to_filename(path)  # RAS already: no reorientation
    return path


def test_nifti_slices(tmp_path):
    vol = np.random.default_rng(4).normal(500, 100, (12, 10, 6)).astype(np.float32)
    root = tmp_path / "nifti"
    write_nifti(root / "a.nii.gz", vol)
    write_nifti(root / "b.nii", vol[::-1])
    assert detect_format(root) == "nifti"
    mid = opened(root)
    assert [(r.path, r.frame, r.shape) for r in mid] == [("a.nii.gz", 3, (1, 10, 12)), ("b.nii", 3, (1, 10, 12))]
    lo, hi = np.percentile(vol, (0.5, 99.5))  # one mapping for the whole volume
    expected = np.rint(np.clip((np.rot90(vol[:, :, 3]) - lo) / (hi - lo) * 255, 0, 255))
    got = load_images(mid, size=10, channels=1, fit="crop")[0, 0]
    assert close(got, expected[:, 1:11])  # the centred 10x10 of the 10x12 slice
    every = opened(root, slice="0:all")
    assert len(every) == 24 and [r.frame for r in every][:12] == list(range(12))
    assert [r.frame for r in opened(root, slice="1:7")] == [7, 7]
    split = assign_splits(every, ratios=(0.5, 0.5, 0.0))  # a volume's slices stay together
    assert {r.split for r in split if r.path == "a.nii.gz"} != {r.split for r in split if r.path == "b.nii"}
    with pytest.raises(DiffauditError, match=r"slice index 6 is past axis 2 of .*\(6 slices\)"):
        opened(root, slice="2:6")
    with pytest.raises(DiffauditError, match="AXIS"):
        opened(root, slice="3:mid")
    vol[1, 2, 3] = np.nan
    write_nifti(root / "c.nii.gz", vol)
    with pytest.raises(DiffauditError, match=r"c.nii.gz: it holds 1 NaN or infinite voxels.*1 of 3 files"):
        opened(root)


# ---- datalists ---------------------------------------------------------------------------------------------------
def test_datalists(classes, tmp_path):
    entries = {"training": [{"image": f"a/{i}.png", "label": 0, "patient": f"p{i}"} for i in range(4)],
               "validation": [{"image": "b/0.png", "label": 1, "patient": "p9"}],
               "test": ["b/1.png", "./b/2.png"]}
    (classes / "dataset.json").write_text(json.dumps(entries))
    src = opened(classes / "dataset.json")
    assert src.kind == "datalist" and len(src) == 7
    assert {r.path: r.split for r in src}["b/2.png"] == "test" and {r.split for r in src} == {"train", "val", "test"}
    assert list(training_indices(src)) == [0, 1, 2, 3]
    entries["test"].append("a/1.png")
    (classes / "dataset.json").write_text(json.dumps(entries))
    with pytest.raises(DiffauditError, match=r"names a/1.png twice \(.*training\[1\] and .*test\[2\]\)"):
        opened(classes / "dataset.json")
    (classes / "list.csv").write_text("file,split,label\na/0.png,train,1\nb/0.png,test,0\n")
    assert [(r.split, r.label) for r in opened(classes / "list.csv")] == [("train", 1), ("test", 0)]
    (classes / "list.csv").write_text("file,split\na/0.png,train\na/0.png,test\n")
    with pytest.raises(DiffauditError, match="names a/0.png twice"):
        opened(classes / "list.csv")
    (classes / "list.csv").write_text("file,split\n../../etc/passwd,train\n")
    with pytest.raises(DiffauditError, match="outside the data root"):
        opened(classes / "list.csv")


def test_detect_format(classes, tmp_path):
    assert detect_format(classes) == "folder"
    (classes / "x.dcm").write_bytes(b"\0" * 128 + b"DICM")
    with pytest.raises(DiffauditError, match=r"several kinds \(10 folder, 1 dicom\); pass format="):
        detect_format(classes)
    with pytest.raises(DiffauditError, match="x.dcm: not a file the folder source reads"):
        opened(classes, format="folder")
    assert len(opened(classes, format="folder", skip_unreadable=True)) == 10  # an explicit format overrides
    for name, kind in (("d.csv", "datalist"), ("d.json", "datalist"), ("m.npz", "medmnist"), ("v.nii.gz", "nifti")):
        (tmp_path / name).write_bytes(b"")
        assert detect_format(tmp_path / name) == kind


def test_medmnist_npz(tmp_path):
    path = write_synthetic_medmnist(tmp_path / "breastmnist.npz", sizes=(6, 2, 3), channels=1, classes=2)
    src = opened(path)
    assert src.kind == "medmnist" and len(src) == 11 and [r.split for r in src].count("val") == 2
    assert src.records[0].shape == (1, 28, 28) and "official release: no" in src.notes[0]
    x = load_images(src, size=28, channels=1)
    data = np.load(path)
    assert np.array_equal(x[8:, 0], data["test_images"])  # unchanged, in split order
    assert [r.label for r in src][:6] == data["train_labels"][:, 0].tolist()
    write_synthetic_medmnist(tmp_path / "breastmnist_64.npz", sizes=(2, 1, 1), channels=1, classes=2)
    with pytest.raises(DiffauditError, match="holds 28x28 images, not 64x64"):
        opened(tmp_path / "breastmnist_64.npz")


# ---- the cache, the rebuild check, duplicates ----------------------------------------------------------------------
def test_cache_equals_memory_and_is_stable(classes, tmp_path):
    save(classes / "a" / "5.png", grey(10 * ord("b") + 2))  # the twin of b/2.png
    src = assign_splits(opened(classes), seed=0, ratios=(1.0, 0.0, 0.0))
    first = prepare_cache(src, tmp_path / "c1.npy", size=8, channels=1, batch=3, progress=False, log=quiet)
    second = prepare_cache(src, tmp_path / "c2.npy", size=8, channels=1, batch=5, workers=1, progress=False, log=quiet)
    cache = np.load(first.path, mmap_mode="r")
    assert isinstance(cache, np.memmap) and cache.shape == first.shape == (11, 1, 8, 8)
    assert np.array_equal(cache, load_images(src, size=8, channels=1))
    assert first.sha256 == second.sha256 and first.pixel_digests == second.pixel_digests
    assert first.preprocessing["rules"] == {"unchanged": 11}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c1.npy", "c2.npy", "classes"]  # no temporary left
    twin, original = [r.path for r in src].index("a/5.png"), [r.path for r in src].index("b/2.png")
    assert duplicate_groups(first.pixel_digests, [r.split for r in src]) == {"train": [[twin, original]]}
    assert twins(first.pixel_digests, original) == [twin]
    assert twin not in without_twins(range(11), first.pixel_digests, original)


def test_changed_source_refused(classes, tmp_path):
    src = opened(classes)
    check_sources(src)
    save(classes / "b" / "3.png", grey(99))
    with pytest.raises(DiffauditError, match=r"b/3.png has changed since the source was scanned \(1 of 10 files"):
        check_sources(src)
    with pytest.raises(DiffauditError, match=r"b/3.png changed since the source was scanned"):
        prepare_cache(src, tmp_path / "c.npy", size=8, channels=1, progress=False, log=quiet)
    assert not (tmp_path / "c.npy").exists()
    (classes / "a" / "1.png").unlink()
    with pytest.raises(DiffauditError, match=r"a/1.png has gone missing since the source was scanned \(2 of 10"):
        check_sources(src)


def test_options_checked():
    with pytest.raises(DiffauditError, match="frames='some'"):
        SourceOptions(frames="some")
    with pytest.raises(DiffauditError, match="window width 0 must be at least 1"):
        SourceOptions(window=(40, 0))
