"""Data sources: hospital folders (PNG, JPEG, TIFF, BMP, DICOM, NIfTI), datalists and MedMNIST files, read into
records and prepared as one memory-mappable uint8 [N, C, S, S] array.

The stages, each a plain function::

    source = open_source("scans/", slice="2:mid")          # records: file, SHA-256, split, label, patient, frame
    source = assign_splits(source, ratios=(0.8, 0.1, 0.1), seed=0)   # patients kept in one split
    check_sources(source)                                   # every file unchanged since the scan
    prepared = prepare_cache(source, "train.npy", size=64, channels=1)   # .npy, its SHA-256, the preprocessing
    groups = duplicate_groups(prepared.pixel_digests, [r.split for r in source])

The kinds (``SOURCES``, chosen by :func:`detect_format` or ``format=``) are ``medmnist``, ``folder``,
``dicom``, ``nifti`` and ``datalist``. A reader returns [C, H, W] arrays and a record carries its frame or slice,
so 3D volumes can be added as records of rank-4 shape without changing the rest.
"""

from .cache import Prepared, check_sources, iter_batches, load_images, prepare_cache
from .duplicates import duplicate_groups, pixel_digest, twins, without_twins
from .geometry import MAX_SIZE
from .intensity import PERCENTILES, Decoded
from .records import SPLITS, Record, Skipped, Source, SourceOptions
from .registry import SOURCES, detect_format, open_source
from .splits import RATIOS, assign_splits, split_indices, training_indices

__all__ = ["MAX_SIZE", "PERCENTILES", "RATIOS", "SOURCES", "SPLITS", "Decoded", "Prepared", "Record", "Skipped",
           "Source", "SourceOptions", "assign_splits", "check_sources", "detect_format", "duplicate_groups",
           "iter_batches", "load_images", "open_source", "pixel_digest", "prepare_cache", "split_indices",
           "training_indices", "twins", "without_twins"]
