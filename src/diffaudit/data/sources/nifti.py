"""NIfTI volumes through nibabel, read as 2D slices.

``slice="AXIS[:INDEX|mid|all]"`` picks the slices: the axis 0, 1 or 2 of the volume reoriented to the closest
canonical RAS+ orientation (nibabel's ``as_closest_canonical``, so axis 2 is axial, 1 coronal and 0 sagittal
whatever the scanner stored), then one index, the middle one (``mid``, n // 2, the default) or every slice
(``all``). A slice is shown rotated by 90 degrees (``np.rot90``) so that anterior or superior is up.

Intensities keep the file's scaling (``scl_slope``, ``scl_inter``) and are mapped to 0..255 between the
0.5th and 99.5th percentiles of the whole volume, so every slice of a volume shares one mapping. A volume with
NaN or infinite voxels is refused (a percentile of them is undefined), as is an index past the volume.
"""

from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from ...errors import DiffauditError
from .files import Unreadable, sha256_bytes
from .intensity import Decoded, percentile_range

EXTENSIONS = (".nii", ".nii.gz")
_SLICE = re.compile(r"^([012])(?::(mid|all|\d+))?$")


def parse_slice(spec: str) -> tuple[int, str | int]:
    """(axis, "mid" | "all" | index) of ``"AXIS[:INDEX|mid|all]"``.

    >>> parse_slice("2:mid"), parse_slice("0:all"), parse_slice("1:40"), parse_slice("2")
    ((2, 'mid'), (0, 'all'), (1, 40), (2, 'mid'))
    """
    m = _SLICE.match(str(spec).strip().lower())
    if not m:
        raise DiffauditError(f"slice='{spec}' is not AXIS[:INDEX|mid|all] with AXIS 0, 1 or 2; e.g. slice='2:mid'")
    which = m.group(2) or "mid"
    return int(m.group(1)), which if which in ("mid", "all") else int(which)


def _image(data: bytes):
    import nibabel as nib

    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as err:
            raise Unreadable(f"truncated or corrupt gzip ({err})") from None
    if len(data) < 4:
        raise Unreadable("not a NIfTI file (too short)")
    sizeof_hdr = {struct.unpack("<i", data[:4])[0], struct.unpack(">i", data[:4])[0]}
    cls = nib.Nifti1Image if 348 in sizeof_hdr else nib.Nifti2Image if 540 in sizeof_hdr else None
    if cls is None:
        raise Unreadable("not a NIfTI-1 or NIfTI-2 file (header size is neither 348 nor 540)")
    try:
        img = nib.as_closest_canonical(cls.from_bytes(data))
        return np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as err:  # nibabel raises several types on damaged files
        raise Unreadable(f"truncated or corrupt NIfTI ({type(err).__name__}: {err})") from None


class _Volume:
    def __init__(self, volume: np.ndarray, axis: int, frames: list[int], sha256: str) -> None:
        self.volume, self.axis, self.frames, self.sha256, self.patient = volume, axis, frames, sha256, None
        self.window = percentile_range(volume)

    def _slice(self, k: int) -> np.ndarray:
        return np.ascontiguousarray(np.rot90(np.take(self.volume, k, axis=self.axis)))[None]

    def shape(self, frame: int) -> tuple[int, ...]:
        return self._slice(frame).shape

    def decode(self, record) -> Decoded:
        return Decoded(self._slice(record.frame), window=self.window, how="volume percentiles")


class NiftiReader:
    """Reader of the ``nifti`` kind."""

    kind = "nifti"

    def __init__(self, *, slice: str = "2:mid") -> None:
        self.axis, self.which = parse_slice(slice)
        try:
            import nibabel  # noqa: F401
        except ImportError:
            raise DiffauditError("reading NIfTI needs nibabel; pip install 'diffaudit[medical]'") from None

    def accepts(self, name: str) -> bool:
        return name.lower().endswith(EXTENSIONS)

    def open(self, path: Path, name: str) -> _Volume:
        data = path.read_bytes()
        vol = _image(data)
        while vol.ndim > 3 and vol.shape[-1] == 1:
            vol = vol[..., 0]
        if vol.ndim == 2:
            vol = vol[..., None]
        if vol.ndim != 3:
            raise Unreadable(f"it is a {vol.ndim}D image of shape {vol.shape}; only 2D and 3D volumes are read")
        bad = int(np.count_nonzero(~np.isfinite(vol)))
        if bad:
            raise Unreadable(f"it holds {bad} NaN or infinite voxels; replace them (e.g. by 0) and run again")
        n = vol.shape[self.axis]
        if self.which == "all":
            frames = list(range(n))
        elif self.which == "mid":
            frames = [n // 2]
        elif self.which >= n:
            raise DiffauditError(f"slice index {self.which} is past axis {self.axis} of {path} ({n} slices); "
                                 f"pass slice='{self.axis}:K' (--slice {self.axis}:K) with K below {n}, or '{self.axis}:mid'")
        else:
            frames = [self.which]
        return _Volume(vol, self.axis, frames, sha256_bytes(data))
