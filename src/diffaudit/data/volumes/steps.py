"""The preprocessing of one volume, by MONAI's transforms, recorded as it was run.

A NIfTI volume is loaded with its affine (``LoadImage``, nibabel's reader, channel first), then:

1. ``Orientation(axcodes="RAS")``: the array's axes become RAS+ (x increases towards the patient's Right, y towards
   the Anterior, z towards the Superior), whatever order the scanner stored (IXI's files are P, S, R);
2. ``Spacing(pixdim=spacing, mode="bilinear")`` when a spacing (mm) is given: resampled to that voxel size;
3. ``ResizeWithPadOrCrop(size)`` (``fit="crop-pad"``, the default: the anatomy keeps its scale) or
   ``Resize(size, mode="area")`` (``fit="resize"``: the whole field of view, squeezed to the size);
4. ``ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0, b_max=255, clip=True)``: intensities between
   the volume's 0.5th and 99.5th percentiles mapped onto 0..255, then rounded once to uint8.

These are the steps of MONAI's 3D latent diffusion tutorial (BraTS at 96 x 96 x 64), so the library does them and
this module only chooses and records them. The size is MONAI's ``spatial_size`` in the RAS array's axis order
(x, y, z), written D, H, W in the canonical form [N, C, D, H, W].
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import DiffauditError
from ..sources.intensity import PERCENTILES

FITS = ("crop-pad", "resize")
READERS = ("nifti", "dicom", "medmnist3d")
MAX_SIDE = 1024  # voxels per axis: a larger size is a typo, not a volume to hold in memory


@dataclass(frozen=True)
class VolumeSteps:
    """What :func:`preprocess` does: the output ``size`` (D, H, W), the voxel ``spacing`` in mm (None: keep the
    file's), how the volume is brought to the size (``fit``), and which volume of a 4D file to take
    (``volume_index``; None refuses 4D files)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float] | None = None
    fit: str = "crop-pad"
    volume_index: int | None = None
    # nifti: one file per volume; dicom: one folder per volume, its DICOM series; medmnist3d: the arrays of one .npz
    reader: str = "nifti"
    series: str | None = None  # dicom: the SeriesInstanceUID to take from a folder of several

    def __post_init__(self) -> None:
        size = tuple(self.size)
        if len(size) != 3 or not all(isinstance(s, (int, np.integer)) and 1 <= s <= MAX_SIDE for s in size):
            raise DiffauditError(f"size {self.size!r} is not D,H,W with each between 1 and {MAX_SIDE} voxels; "
                                 "e.g. --size 32,32,32")
        if self.spacing is not None and (len(self.spacing) != 3 or not all(s > 0 for s in self.spacing)):
            raise DiffauditError(f"spacing {self.spacing!r} is not three positive sizes in mm; e.g. --spacing 2,2,2")
        if self.fit not in FITS:
            raise DiffauditError(f"fit '{self.fit}' is not one of {', '.join(FITS)}")
        if self.volume_index is not None and self.volume_index < 0:
            raise DiffauditError(f"volume_index {self.volume_index} is negative; give the 0-based index of the volume")
        if self.reader not in READERS:
            raise DiffauditError(f"reader '{self.reader}' is not one of {', '.join(READERS)}")

    def record(self) -> list[dict[str, Any]]:
        """The steps as the manifest records them: MONAI's transform names and arguments, in order."""
        load = {"nifti": {"transform": "LoadImage", "reader": "NibabelReader", "ensure_channel_first": True},
                "dicom": {"transform": "DICOM series (pydicom)", "series": self.series or "the folder's only one",
                          "order": "ImagePositionPatient along the slice normal, equal gaps", "values": "modality LUT",
                          "affine": "RAS+"},
                "medmnist3d": {"transform": "MedMNIST 3D array", "affine": "identity (1 mm, taken as RAS+: the file "
                                                                          "records no orientation)"}}[self.reader]
        steps: list[dict[str, Any]] = [load, {"transform": "Orientation", "axcodes": "RAS"}]
        if self.volume_index is not None:
            steps.insert(1, {"transform": "select 4D volume", "index": self.volume_index})
        if self.spacing is not None:
            steps.append({"transform": "Spacing", "pixdim": list(self.spacing), "mode": "bilinear"})
        if self.fit == "crop-pad":
            steps.append({"transform": "ResizeWithPadOrCrop", "spatial_size": list(self.size)})
        else:
            steps.append({"transform": "Resize", "spatial_size": list(self.size), "mode": "area"})
        if self.reader == "medmnist3d":  # already 0..255: kept (a mask's percentiles could both be 0)
            steps.append({"transform": "ScaleIntensityRange", "a_min": 0, "a_max": 255, "b_min": 0, "b_max": 255,
                          "clip": True})
        else:
            steps.append({"transform": "ScaleIntensityRangePercentiles", "lower": PERCENTILES[0],
                          "upper": PERCENTILES[1], "b_min": 0, "b_max": 255, "clip": True})
        steps.append({"transform": "round to uint8"})
        return steps


#: RAS+ in MONAI's own labels, passed explicitly (its default is changing to the MetaTensor's "space")
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def _monai():
    import logging

    # MONAI announces at import that an optional GPU DICOM decoder is absent; that says nothing about volumes
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            from monai import transforms
    except ImportError:
        raise DiffauditError("reading volumes needs MONAI; pip install 'diffaudit[monai,medical]'") from None
    return transforms


class Unloadable(Exception):
    """A volume file the preprocessing cannot take; the message is the reason, without the file's name."""


def from_array(volume: np.ndarray) -> Any:
    """A [D, H, W] array with no recorded geometry (a MedMNIST 3D volume) as MONAI's channel-first MetaTensor with an
    identity affine (1 mm voxels, RAS+)."""
    from monai.data import MetaTensor

    return MetaTensor(np.asarray(volume, dtype=np.float32)[None], affine=np.eye(4))


def load(path, steps: VolumeSteps | None = None) -> Any:
    """The NIfTI volume at ``path`` (or, with ``steps.reader`` dicom, the DICOM series of the folder ``path``) as
    MONAI's channel-first MetaTensor [C or 4D volumes, x, y, z] with its affine."""
    if steps is not None and steps.reader == "dicom":
        from .dicom_series import choose_series, find_series, series_volume

        try:
            uid, files = choose_series(find_series(path), steps.series, path)
            return series_volume(files, uid=uid)
        except DiffauditError as err:
            raise Unloadable(str(err).replace(f"{path} ", "the folder ").replace(str(path), "the folder")) from None
    t = _monai()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the same absent DICOM decoder, again at first use
            return t.LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True)(str(path))
    except Exception as err:  # nibabel and MONAI raise several types on damaged files
        raise Unloadable(f"truncated or corrupt NIfTI ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None


def preprocess(volume, steps: VolumeSteps) -> tuple[np.ndarray, dict[str, Any]]:
    """uint8 [C, D, H, W] of a loaded volume (:func:`load`) by ``steps``, with what was read: the shape, voxel
    spacing and orientation of the file."""
    t = _monai()
    source = {"shape": [int(s) for s in volume.shape[1:]],
              "spacing": [round(float(s), 6) for s in volume.pixdim[:3]],
              "orientation": "".join(_axcodes(volume.affine))}
    if volume.ndim != 4:
        raise Unloadable(f"it is a {volume.ndim - 1}D image of shape {list(volume.shape[1:])}; a volume has 3 axes")
    if volume.shape[0] > 1 or steps.volume_index:  # channel first: a 4D file's volumes are the channels
        volume = _select(volume, steps.volume_index, source)
    bad = int((~np.isfinite(np.asarray(volume))).sum())
    if bad:
        raise Unloadable(f"it holds {bad} NaN or infinite voxels; replace them (e.g. by 0) and run again")
    volume = t.Orientation(axcodes="RAS", labels=RAS_LABELS)(volume)
    if steps.spacing is not None:
        volume = t.Spacing(pixdim=steps.spacing, mode="bilinear")(volume)
    if steps.fit == "crop-pad":
        volume = t.ResizeWithPadOrCrop(spatial_size=steps.size)(volume)
    else:
        volume = t.Resize(spatial_size=steps.size, mode="area")(volume)
    if steps.reader == "medmnist3d":
        volume = t.ScaleIntensityRange(a_min=0, a_max=255, b_min=0, b_max=255, clip=True)(volume)
    else:
        volume = t.ScaleIntensityRangePercentiles(lower=PERCENTILES[0], upper=PERCENTILES[1], b_min=0, b_max=255,
                                                  clip=True)(volume)
    return np.rint(np.asarray(volume, dtype=np.float32)).clip(0, 255).astype(np.uint8), source


def _select(volume, index: int | None, source: dict):
    n = volume.shape[0]
    if index is None:
        raise Unloadable(f"it is a 4D image of {n} volumes; pass volume_index (--volume-index K) to take one")
    if index >= n:
        raise Unloadable(f"volume_index {index} is past its {n} volumes; pass one below {n}")
    source["volumes"] = n
    return volume[index:index + 1]


def _axcodes(affine) -> tuple[str, ...]:
    import nibabel as nib

    return nib.aff2axcodes(np.asarray(affine, dtype=np.float64))
