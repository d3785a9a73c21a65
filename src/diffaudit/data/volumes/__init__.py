"""3D volumes as data: NIfTI files and MedMNIST 3D arrays brought to the canonical form uint8 [N, C, D, H, W].

* :mod:`.steps` — the preprocessing, by MONAI's transforms (those of MONAI's 3D latent diffusion tutorial):
  orientation to RAS, resampling to a voxel spacing, resizing or cropping-and-padding to a size, and scaling between
  the 0.5th and 99.5th percentiles onto 0..255; each step is recorded as it was run.
* :mod:`.cache` — streaming the volumes into one memory-mappable ``.npy`` (written to a temporary file and
  renamed), with the SHA-256 of every source file and of the array, so that a later stage never decodes a NIfTI
  again and a rebuild refuses a changed file by name.
* :mod:`.dicom_series` — DICOM series as volumes: one per SeriesInstanceUID, slices sorted along the normal, a missing
  or repeated slice refused with its positions, the series named when a folder holds several.
* :mod:`.patients` — each volume's patient (from its file name), splits that keep a patient's volumes together,
  and the attributes (IXI's age and sex) a model may be conditioned on.
* :mod:`.prepared` — a folder of volumes prepared into a run (``prepare --data FOLDER --size D,H,W``): split by
  patient, cached in split order, recorded in the manifest, offering the interface of a prepared 2D source.
* :mod:`.fingerprint` — the SAF in 3D: a ball or a shell on the anatomy (Otsu, closing, largest 26-connected
  component), standing out from x_i by the 2D rule's contrast (its three orthogonal slices: diffaudit.images).
"""

from .cache import VOLUME_EXTENSIONS, check_sources, list_volumes, medmnist3d_volumes, write_volume_cache
from .steps import VolumeSteps

__all__ = ["VOLUME_EXTENSIONS", "VolumeSteps", "check_sources", "list_volumes", "medmnist3d_volumes",
           "write_volume_cache"]
