"""DICOM files through pydicom: stored values to the modality's units, then to display values.

Per file: the modality transform (a Modality LUT Sequence, else RescaleSlope/RescaleIntercept, also read from the
Shared Functional Groups of enhanced multi-frame files; CT values become Hounsfield units), then the file's VOI
(a VOI LUT Sequence, else the first WindowCenter/WindowWidth with its VOILUTFunction), which
:mod:`.intensity` maps to 0..255; without a VOI the percentile rule applies, and uint8 pixels without a rescale
pass unchanged. MONOCHROME1 is inverted after the mapping. Colour files are decoded to RGB by pydicom.

Refused: a file without pixel data (structured reports, ``DICOMDIR``), segmentations and RT structure sets (not
images); a multi-frame file unless ``frames="all"`` (the refusal names the option); a compressed transfer syntax
for which no pixel decoder is installed (the refusal names the packages); PALETTE COLOR images. Per-frame rescale
or window values of enhanced files are not read: the shared ones apply to every frame.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ...errors import DiffauditError
from .files import Unreadable, sha256_bytes
from .intensity import Decoded, linear_window

EXTENSIONS = (".dcm", ".dicom", ".ima")
#: SOP classes whose pixel data are not images of the patient
_NOT_IMAGES = {"1.2.840.10008.5.1.4.1.1.66.4": "a segmentation (SEG)",
               "1.2.840.10008.5.1.4.1.1.481.3": "an RT structure set"}
_LIBJPEG, _OPENJPEG = "pylibjpeg pylibjpeg-libjpeg", "pylibjpeg pylibjpeg-openjpeg"
#: packages that decode each compressed transfer syntax (pydicom's pixel-data plugins); python-gdcm reads them all
_DECODERS = {"1.2.840.10008.1.2.4.50": _LIBJPEG, "1.2.840.10008.1.2.4.51": _LIBJPEG,
             "1.2.840.10008.1.2.4.57": _LIBJPEG, "1.2.840.10008.1.2.4.70": _LIBJPEG,
             "1.2.840.10008.1.2.4.80": _LIBJPEG, "1.2.840.10008.1.2.4.81": _LIBJPEG,
             "1.2.840.10008.1.2.4.90": _OPENJPEG, "1.2.840.10008.1.2.4.91": _OPENJPEG,
             "1.2.840.10008.1.2.4.201": _OPENJPEG, "1.2.840.10008.1.2.4.202": _OPENJPEG,
             "1.2.840.10008.1.2.4.203": _OPENJPEG, "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle"}


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise DiffauditError("reading DICOM needs pydicom; pip install 'diffaudit[medical]'") from None
    return pydicom


def _decoder_missing(ts) -> bool:
    """True when pydicom (3.x) has no working decoder for the transfer syntax ``ts``."""
    try:
        from pydicom.pixels import get_decoder
    except ImportError:  # pydicom 2.x: known only when decoding fails
        return False
    try:
        return not get_decoder(ts).is_available
    except (NotImplementedError, ValueError):
        return True


def _refuse_codec(path: Path, ts) -> DiffauditError:
    pkgs = _DECODERS.get(str(ts), "pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg")
    return DiffauditError(f"{path} is compressed with {ts.name}, which no installed pixel decoder reads; "
                          f"pip install {pkgs} (or python-gdcm), then run again")


def _luts():
    """pydicom's (apply_modality_lut, apply_voi_lut): in ``pydicom.pixels`` from 3.0, in its handlers' util before."""
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    return apply_modality_lut, apply_voi_lut


def _shared(ds, sequence: str, keyword: str):
    """``keyword`` of the Shared Functional Groups' ``sequence`` (enhanced multi-frame files), else None."""
    try:
        return getattr(ds.SharedFunctionalGroupsSequence[0][sequence][0], keyword)
    except (AttributeError, KeyError, IndexError):
        return None


def _modality(ds, arr: np.ndarray) -> np.ndarray:
    """Stored values to modality units; unchanged (and uint8 kept) without a rescale."""
    if "ModalityLUTSequence" in ds:
        return np.asarray(_luts()[0](arr, ds), np.float32)
    slope = ds.get("RescaleSlope", _shared(ds, "PixelValueTransformationSequence", "RescaleSlope"))
    intercept = ds.get("RescaleIntercept", _shared(ds, "PixelValueTransformationSequence", "RescaleIntercept"))
    slope = 1.0 if slope is None else float(slope)
    intercept = 0.0 if intercept is None else float(intercept)
    if arr.dtype == np.uint8 and slope == 1.0 and intercept == 0.0:
        return arr
    return arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _first(value) -> float:
    """The first of a multi-valued window (a file may offer several, the first is the default)."""
    from pydicom.multival import MultiValue
    return float(value[0]) if isinstance(value, (MultiValue, list, tuple)) else float(value)


def _voi(ds, x: np.ndarray) -> tuple[np.ndarray, tuple[float, float] | None, str | None]:
    """(values, the (low, high) the file's VOI maps to 0..255, its description); no VOI: (x, None, None)."""
    if "VOILUTSequence" in ds:
        y = np.asarray(_luts()[1](x, ds, prefer_lut=True), np.float32)
        lut = np.asarray(ds.VOILUTSequence[0].LUTData, np.float32)
        return y, (float(lut.min()), float(lut.max())), "file VOI LUT"
    center = ds.get("WindowCenter", _shared(ds, "FrameVOILUTSequence", "WindowCenter"))
    width = ds.get("WindowWidth", _shared(ds, "FrameVOILUTSequence", "WindowWidth"))
    if center is None or width is None:
        return x, None, None
    c, w = _first(center), _first(width)
    function = str(ds.get("VOILUTFunction", "LINEAR")).upper()
    if function == "SIGMOID" and w > 0:  # PS3.3 C.11.2.1.3.1, on 0..1
        return 1.0 / (1.0 + np.exp(-4.0 * (x - c) / w)), (0.0, 1.0), "file window (sigmoid)"
    if function == "LINEAR_EXACT" and w > 0:
        return x, (c - w / 2, c + w / 2), "file window (linear exact)"
    if w < 1:
        raise Unreadable(f"its WindowWidth {w:g} is below 1; pass window=(center, width) (--window CENTER,WIDTH) "
                         "to choose one")
    return x, linear_window(c, w), "file window"


class _Frames:
    def __init__(self, frames: np.ndarray, window, how, invert: bool, patient: str | None, sha256: str) -> None:
        self.pixels, self.window, self.how, self.invert = frames, window, how, invert
        self.patient, self.sha256 = patient, sha256
        self.frames = [None] if len(frames) == 1 else list(range(len(frames)))

    def shape(self, frame: int | None) -> tuple[int, ...]:
        return self.pixels[frame or 0].shape

    def decode(self, record) -> Decoded:
        return Decoded(self.pixels[record.frame or 0], window=self.window, how=self.how, invert=self.invert)


class DicomReader:
    """Reader of the ``dicom`` kind; every file that is not ignored is tried (DICOM files often have no
    extension)."""

    kind = "dicom"

    def __init__(self, *, frames: str = "single") -> None:
        self.frames = frames
        _pydicom()

    def accepts(self, name: str) -> bool:
        return True

    def _read(self, data: bytes, path: Path):
        pydicom = _pydicom()
        from pydicom.errors import InvalidDicomError
        try:
            return pydicom.dcmread(io.BytesIO(data))
        except InvalidDicomError:
            if not path.name.lower().endswith(EXTENSIONS):
                raise Unreadable("not a DICOM file (no 'DICM' marker)") from None
        except Exception as err:  # pydicom raises many types on damaged files
            raise Unreadable(f"not a readable DICOM file ({type(err).__name__}: {err})") from None
        try:  # a .dcm without the preamble, as some older writers leave it
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            if "SOPClassUID" in ds or "PixelData" in ds:
                return ds
        except Exception:
            pass
        raise Unreadable("not a DICOM file (no 'DICM' marker)")

    def open(self, path: Path, name: str) -> _Frames:
        data = path.read_bytes()
        ds = self._read(data, path)
        sop = str(ds.get("SOPClassUID", ""))
        if sop in _NOT_IMAGES:
            raise Unreadable(f"it is {_NOT_IMAGES[sop]}, not an image")
        if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            kind = ds.SOPClassUID.name if "SOPClassUID" in ds else "no SOP class"
            if "SOPClassUID" not in ds or "Image Storage" in kind or "Rows" in ds:  # pydicom stops quietly at the end
                raise Unreadable(f"it holds no pixel data ({kind}); the file is truncated or damaged")
            raise Unreadable(f"it holds no pixel data ({kind}); it is not an image")
        n = int(ds.get("NumberOfFrames", 1) or 1)
        if n > 1 and self.frames != "all":
            raise DiffauditError(f"{path} holds {n} frames; pass frames='all' (--frames all) to take one image per frame")
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        if photometric == "PALETTE COLOR":
            raise Unreadable("PALETTE COLOR images are not read; convert it to RGB")
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        compressed = ts is not None and ts.is_compressed
        if compressed and _decoder_missing(ts):
            raise _refuse_codec(path, ts)
        try:
            arr = np.asarray(ds.pixel_array)
        except Exception as err:
            if compressed and any(w in str(err).lower() for w in ("handler", "plugin", "missing", "dependenc")):
                raise _refuse_codec(path, ts) from None
            raise Unreadable(f"its pixel data cannot be decoded ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''})") from None
        colour = int(ds.get("SamplesPerPixel", 1)) > 1
        frames = arr if n > 1 else arr[None]
        frames = frames.transpose(0, 3, 1, 2) if colour else frames[:, None]
        window, how = None, None
        if not colour:
            frames = _modality(ds, frames)
            frames, window, how = _voi(ds, frames)
        patient = str(ds.get("PatientID", "") or "").strip() or None
        return _Frames(np.ascontiguousarray(frames), window, how, photometric == "MONOCHROME1", patient,
                       sha256_bytes(data))
