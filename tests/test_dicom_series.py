"""DICOM series as volumes (``diffaudit.data.volumes.dicom_series``): series written here with pydicom, their slices
sorted along the normal whatever the file order, refused when a slice is missing, and chosen by name."""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pydicom")
pytest.importorskip("monai")

from diffaudit.data.volumes import VolumeSteps  # noqa: E402
from diffaudit.data.volumes.dicom_series import choose_series, find_series, series_volume  # noqa: E402
from diffaudit.data.volumes.steps import preprocess  # noqa: E402
from diffaudit.errors import DiffauditError  # noqa: E402


def write_series(folder: Path, n: int = 8, *, uid: str | None = None, skip: int | None = None,
                 spacing: float = 3.0) -> str:
    """n axial CT slices of 12 x 10 px (0.5 x 0.8 mm), slice k's pixels k * 100 stored (HU k * 100 - 1000 after a
    rescale of slope 1, intercept -1000), written in reverse order of position; returns the series UID."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    uid = uid or generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        if k == skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID, uid
        ds.Modality, ds.PatientID = "CT", "P1"
        ds.Rows, ds.Columns = 12, 10
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-20.0, -30.0, 50.0 + k * spacing]
        ds.PixelSpacing = [0.5, 0.8]
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1000
        pixels = np.full((12, 10), k * 100, dtype=np.uint16)
        pixels[0, 0] = 4000  # a corner marker: row 0, column 0
        ds.PixelData = pixels.tobytes()
        ds.save_as(folder / f"img{n - k:03d}.dcm", enforce_file_format=True)
    return uid


def test_a_series_becomes_a_ras_volume_with_its_slices_in_order(tmp_path):
    uid = write_series(tmp_path / "ct")
    found = find_series(tmp_path / "ct")
    assert list(found) == [uid] and len(found[uid]) == 8
    vol = series_volume(found[uid], uid=uid)
    assert tuple(vol.shape) == (1, 10, 12, 8)  # [1, x (columns), y (rows), z]
    assert [float(vol[0, 5, 5, k]) for k in range(8)] == [k * 100 - 1000 for k in range(8)]  # HU, inferior first
    assert np.allclose(np.asarray(vol.pixdim[:3]), [0.8, 0.5, 3.0])
    out, source = preprocess(vol, VolumeSteps(size=(10, 12, 8)))
    assert source["orientation"] == "LPS" and source["spacing"] == [0.8, 0.5, 3.0]  # DICOM's own axes, read as stored
    # in RAS+ the superior slices come last and the patient's right (DICOM's low x) comes last along x
    assert out[0, 4, 4, 7] > out[0, 4, 4, 0]
    assert out[0, -1, -1, 3] == 255  # DICOM's row 0, column 0 (right, anterior in LPS) at the end of x and y


def test_a_missing_or_repeated_slice_is_refused_with_the_positions(tmp_path):
    write_series(tmp_path / "gap", skip=4)
    files = next(iter(find_series(tmp_path / "gap").values()))
    with pytest.raises(DiffauditError, match=r"has a missing slice: 6.00 mm between the slices at 59.00 and 65.00 mm "
                                             r"along the normal, where the others are 3.00 mm apart"):
        series_volume(files)
    uid = write_series(tmp_path / "twice", n=4)
    files = find_series(tmp_path / "twice")[uid]
    (tmp_path / "twice" / "copy.dcm").write_bytes(files[0].read_bytes())
    with pytest.raises(DiffauditError, match="has a repeated slice"):
        series_volume(find_series(tmp_path / "twice")[uid])


def test_two_series_need_one_named(tmp_path):
    a = write_series(tmp_path / "study" / "a", n=3)
    b = write_series(tmp_path / "study" / "b", n=5)
    series = find_series(tmp_path / "study")
    with pytest.raises(DiffauditError, match=r"holds 2 DICOM series: .*\(3 files\).*\(5 files\)|holds 2 DICOM series: "
                                             r".*\(5 files\).*\(3 files\)"):
        choose_series(series, None, tmp_path / "study")
    assert choose_series(series, b, tmp_path / "study")[0] == b and len(choose_series(series, a, tmp_path)[1]) == 3
    with pytest.raises(DiffauditError, match="--series 1.2.3 is not in"):
        choose_series(series, "1.2.3", tmp_path / "study")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffauditError, match="holds no DICOM files"):
        find_series(tmp_path / "empty")
