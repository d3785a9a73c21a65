"""DICOM series as volumes: one volume per SeriesInstanceUID, its slices in order along the slice normal.

Every DICOM file under a folder is read without its pixels first (pydicom, ``stop_before_pixels``) and grouped by
SeriesInstanceUID. A folder of several series needs one named (``series=``, ``--series``); the refusal lists them.
Within a series, each slice's ImagePositionPatient is projected onto the normal of its ImageOrientationPatient
(the row direction x the column direction) and the slices are sorted by it. The gaps between neighbours must be equal
(within 1% and 0.01 mm) and positive: a missing slice, a repeated one or a mixed stack is refused by name, with the
positions. Pixels get the modality transform (RescaleSlope and RescaleIntercept; CT values become Hounsfield units).

The volume is a MONAI MetaTensor [1, x, y, z] (x along the rows' direction, y down the columns, z along the normal)
with its affine in RAS+ (DICOM's patient coordinates are LPS+: x and y flip), so :func:`.steps.preprocess` takes it as
it takes a loaded NIfTI file.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from ...errors import DiffauditError
from ..sources.dicom import EXTENSIONS, _pydicom  # the one place that names the package to install


def find_series(root: str | Path) -> dict[str, list[Path]]:
    """SeriesInstanceUID -> its files, for every DICOM file (by extension, or the DICM preamble) under ``root``."""
    pydicom = _pydicom()
    root = Path(root)
    series: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if not path.name.lower().endswith(EXTENSIONS) and not _has_preamble(path):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as err:  # pydicom raises several types on damaged files
            raise DiffauditError(f"{path}: not a readable DICOM file ({type(err).__name__}); remove it") from None
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        if not uid:
            raise DiffauditError(f"{path} has no SeriesInstanceUID, so it belongs to no series; remove it")
        series[uid].append(path)
    if not series:
        raise DiffauditError(f"{root} holds no DICOM files (.dcm, .dicom, .ima, or files with the DICM preamble)")
    return dict(series)


def _has_preamble(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def choose_series(series: dict[str, list[Path]], uid: str | None, root: Path) -> tuple[str, list[Path]]:
    """The series named ``uid``, or the only one; refuses several without a name, and an unknown name."""
    listing = "; ".join(f"{u} ({len(f)} files)" for u, f in sorted(series.items()))
    if uid is None:
        if len(series) > 1:
            raise DiffauditError(f"{root} holds {len(series)} DICOM series: {listing}; pass --series UID to take one")
        return next(iter(series.items()))
    if uid not in series:
        raise DiffauditError(f"--series {uid} is not in {root}, which holds: {listing}")
    return uid, series[uid]


def series_volume(files: list[Path], *, uid: str = ""):
    """The series' volume as a MetaTensor [1, x, y, z] with its RAS affine (module docstring)."""
    pydicom = _pydicom()
    from monai.data import MetaTensor

    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    name = f"series {uid}" if uid else f"the series of {files[0].parent}"
    if len(headers) < 2:
        raise DiffauditError(f"{name} has {len(headers)} slice; a volume needs at least 2")
    try:
        iop = np.array([float(v) for v in headers[0].ImageOrientationPatient])
        row_spacing, col_spacing = (float(v) for v in headers[0].PixelSpacing)
        ipp = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    except AttributeError as err:
        raise DiffauditError(f"{name} lacks {str(err).split()[-1]} in its files, so its slices cannot be placed; "
                             "export the series with its geometry") from None
    if any(not np.allclose([float(v) for v in h.ImageOrientationPatient], iop, atol=1e-4) for h in headers):
        raise DiffauditError(f"{name} mixes slice orientations; export one stack per series")
    r, c = iop[:3], iop[3:]
    normal = np.cross(r, c)
    depth = ipp @ normal
    order = np.argsort(depth, kind="stable")
    depth = depth[order]
    gaps = np.diff(depth)
    step = float(np.median(gaps))
    if step <= 0.01 or not np.allclose(gaps, step, rtol=0.01, atol=0.01):
        k = int(np.argmax(np.abs(gaps - step)))
        what = ("a repeated slice" if gaps[k] <= 0.01 else "a missing slice" if gaps[k] > step else "uneven slices")
        raise DiffauditError(f"{name} has {what}: {gaps[k]:.2f} mm between the slices at {depth[k]:.2f} and "
                             f"{depth[k + 1]:.2f} mm along the normal, where the others are {step:.2f} mm apart; "
                             "export the whole series")
    slices = []
    for i in order:
        ds = pydicom.dcmread(files[i])
        pixels = ds.pixel_array.astype(np.float32)
        slope, intercept = float(getattr(ds, "RescaleSlope", 1) or 1), float(getattr(ds, "RescaleIntercept", 0) or 0)
        slices.append((pixels * slope + intercept).T)  # [rows, cols] -> [x (along a row), y (down a column)]
    volume = np.stack(slices, axis=-1)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = r * col_spacing, c * row_spacing, normal * step
    lps[:3, 3] = ipp[order[0]]
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return MetaTensor(volume[None], affine=ras, meta={"filename_or_obj": str(files[0].parent)})
