"""The argparse plumbing and the option groups several commands share, each defined once: the run directory, the
device and data root, a model trained elsewhere, the sampler's numerics, differential privacy, the audit's
settings, and the data options (``--data`` and how it is read, the SAF) that map to
:class:`~diffaudit.config.PrepareConfig`."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import textwrap
from typing import Any, NamedTuple

from ..config import (
    ACCOUNTANTS,
    COMPILE_MODES,
    DATA_FORMATS,
    DP_FINETUNE,
    FID_EXTRACTORS,
    FITS,
    FRAMES,
    VOLUME_FITS,
    INCEPTION_FILE,
    PRECISIONS,
    PREDICTION_TYPES,
    PrepareConfig,
    override,
)
from ..diffusion.discrete import SCHEDULER_SAMPLERS
from ..diffusion.samplers import SAMPLERS
from ..errors import DiffauditError
from ..presets import AUDIT_PRESETS

ALL_SAMPLERS = [*SAMPLERS, *SCHEDULER_SAMPLERS]
DEFAULT_AUDIT_PRESET = "cpu-demo"


# ---- the parser ----------------------------------------------------------------------------------------
class _UsageError(Exception):
    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse with one ``error:`` line (and exit code 2) for a bad option, as for every other bad input."""

    def error(self, message: str):  # type: ignore[override]
        raise _UsageError(self.prog, f"{message} (see '{self.prog} --help')")


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows an option's default only where it has one (not "(default: None)" on required or optional ones)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text \
                and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _example(text: str) -> str:
    return "example:\n" + textwrap.indent(textwrap.dedent(text).strip(), "  ")


# ---- option groups -------------------------------------------------------------------------------------
def common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", required=True, help="the run directory (created if missing)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def device_and_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--data-root", default=None, help="folder with the dataset's .npz")


def numerics_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="the sampler's network numerics: fp32 (default; deterministic, TF32 off), tf32 (GPU tensor "
                        "cores) or bf16 (autocast); see the README's table of what each costs and gains")
    p.add_argument("--compile", default=None, choices=("auto", *COMPILE_MODES),
                   help="torch.compile the sampler's network (default auto: on a CPU, compiled for runs of at least "
                        "250 000 images x network evaluations, where its one-off cost pays back; none elsewhere; "
                        "reduce-overhead adds CUDA graphs on a GPU)")
    p.add_argument("--memory-format", default=None, choices=("auto", "channels_last", "contiguous"),
                   help="the network's activations (default auto: channels_last on a CPU, where it is faster; "
                        "contiguous on a GPU)")


def dp_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("differential privacy (DP-SGD through Opacus; --batch-size is the expected logical batch)")
    g.add_argument("--dp-epsilon", type=float, default=None, help="train with DP-SGD to this epsilon (at --dp-delta)")
    g.add_argument("--dp-noise-multiplier", type=float, default=None, help="or with this noise multiplier sigma")
    g.add_argument("--dp-delta", type=float, default=1e-5, help="delta")
    g.add_argument("--dp-max-grad-norm", type=float, default=1.0, help="per-example clipping norm")
    g.add_argument("--dp-noise-multiplicity", type=int, default=1,
                   help="K noise draws averaged inside each example's loss before clipping")
    g.add_argument("--dp-physical-batch-size", type=int, default=64, help="largest forward pass")
    g.add_argument("--dp-accountant", default="prv", choices=ACCOUNTANTS,
                   help="the accountant that calibrates sigma (all three are reported)")
    g.add_argument("--dp-finetune", default="all", choices=DP_FINETUNE,
                   help="train all layers, or the attention layers only (with --dp-pretrained)")
    g.add_argument("--dp-pretrained", default=None, help="the train/ folder of a model to start from (public pretraining)")


def model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("a model trained elsewhere (diffusers, latent, MONAI; see the README)")
    g.add_argument("--model", default=None, help="the folder it was saved to (save_pretrained, a MONAI monai.json, "
                                                 "or a diffaudit train/); a run directory audits one model")
    g.add_argument("--scheduler", default=None, help="for a bare UNet folder: a scheduler folder or "
                                                     "scheduler_config.json, or ddpm/ddim for its defaults")
    g.add_argument("--prediction-type", default=None, choices=PREDICTION_TYPES,
                   help="the network's output (default: the scheduler config's)")


def audit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, choices=list(AUDIT_PRESETS),
                   help=f"{DEFAULT_AUDIT_PRESET} (the default): about 7.5 minutes on 2 CPU cores with its control model (9.5 at 64 px); cpu: about an "
                        "hour; paper: the paper's settings (GPU); cpu-demo-3d: volumes at 32^3 (with --data, a folder of "
                        "NIfTI volumes), gpu-3d-64 and gpu-3d-96x96x64: volumes on a GPU (README: 3D volumes)")
    p.add_argument("--config", default=None, help="an audit config JSON (e.g. a run's audit.json) instead of "
                                                  "--preset; the flags below override its settings")
    p.add_argument("--seed", type=int, default=None, help="the prepare stage's seed (choice of images, x_i, SAF)")
    p.add_argument("--steps", type=int, default=None, help="diffusion training steps (default: the preset's)")
    p.add_argument("--n-samples", type=int, default=None, help="N, generated images to count (default: the preset's)")
    p.add_argument("--M", type=int, default=None, help="reverse runs per t in the t' search (default: the preset's)")
    p.add_argument("--fid-extractor", default=None, choices=FID_EXTRACTORS,
                   help="auto: Inception when its weights are found, else the domain extractor")
    p.add_argument("--inception-weights", default=None, help=f"path of {INCEPTION_FILE} (torch-fidelity's)")
    p.add_argument("--control", action=argparse.BooleanOptionalAction, default=None,
                   help="train a control model (same settings, DP included) on the control set and count its "
                        "samples: the verdict's negatives, as many as the audit's samples (default: on when "
                        "diffaudit trains the model; a model trained elsewhere takes --control-model)")
    p.add_argument("--sequential", action="store_true",
                   help="draw and count shards of sample.shard_size until an anytime-valid interval settles the "
                        "question; --n-samples is then the most to draw (default: the fixed-N count of the paper)")
    p.add_argument("--census", default=None, choices=("pixel", "embedding"), nargs="?", const="pixel",
                   help="add the census stage: how many training images the samples copy, in pixel space (the "
                        "default) or a contrastive embedding trained on the run's real images (see 'diffaudit census')")
    u = p.add_argument_group("the downstream classifier under DP (README: What the synthetic data is worth under DP)")
    u.add_argument("--dp-utility", action="store_true",
                   help="add the DP utility regimes to the utility stage (a class-conditional model): real, "
                        "synthetic, real with DP-SGD, real + synthetic with DP-SGD, synthetic-pretrained then DP")
    u.add_argument("--classifier-epsilons", type=epsilon_list, default=None, metavar="E,E,...",
                   help="the classifier's epsilons, inf for no DP (default 1,3,10,inf; implies --dp-utility)")
    u.add_argument("--mix-ratio", type=float, default=None, metavar="R",
                   help="synthetic images per expected real image of a batch in 'real + synthetic' (default 0.5)")
    u.add_argument("--utility-seeds", type=int, default=None, metavar="K",
                   help="seeds per regime and epsilon, for the intervals (default 3)")
    numerics_options(p)
    p.add_argument("--target-rate", type=float, default=None, metavar="RATE",
                   help="with --sequential: stop once the rate is surely below or above RATE (default: once full "
                        "memorisation is rejected)")
    device_and_data(p)
    p.add_argument("--download", action="store_true",
                   help="download the dataset with medmnist's downloader (MD5 checked) when no local copy is found")


# ---- the data options ----------------------------------------------------------------------------------
#: the PrepareConfig fields the data options set, each under its own name (None: not given)
DATA_FIELDS = ("data", "data_format", "size", "fit", "window", "slice", "frames", "labels", "split_ratios",
               "skip_unreadable", "spacing", "volume_index", "patient_pattern", "series", "attributes", "condition", "half")
#: the SAF options (their dests; --saf-radius may set saf_size instead of saf_radius)
SAF_OPTIONS = ("saf_radius", "saf_width", "saf_intensity", "saf_contrast", "canaries", "duplicates", "inclusion")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_LENGTH = re.compile(rf"^({_NUMBER})\s*(px|%)?$")
_SLICE = re.compile(r"^([012])(?::(mid|all|\d+))?$")


class Length(NamedTuple):
    """A SAF length as given: pixels, or a fraction of the image side (``12%`` -> 0.12)."""

    pixels: float | None
    fraction: float | None


def _length(text: str, *, percent: bool) -> Length:
    m = _LENGTH.match(text.strip().lower())
    if m is None or (m.group(2) == "%" and not percent):
        forms = "pixels (4px or 4) or a percentage of the image side (12%)" if percent else "pixels (2px or 2)"
        raise argparse.ArgumentTypeError(f"takes {forms}, got '{text}'")
    value = float(m.group(1))
    return Length(None, value / 100) if m.group(2) == "%" else Length(value, None)


def columns(text: str) -> tuple[str, ...]:
    """``Sex,Age`` -> ("Sex", "Age")."""
    names = tuple(c.strip() for c in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"takes column names separated by commas (Sex,Age), got '{text}'")
    return names


def saf_radius(text: str) -> Length:
    """``--saf-radius``: ``4px`` or ``4`` (pixels), or ``12%`` (of the image side)."""
    return _length(text, percent=True)


def saf_width(text: str) -> float:
    """``--saf-width``: ``2px`` or ``2`` (pixels)."""
    return _length(text, percent=False).pixels  # type: ignore[return-value]


def _numbers(text: str, n: int, form: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != n or not all(map(math.isfinite, values)):
        raise argparse.ArgumentTypeError(f"takes {form}, got '{text}'")
    return values


def window(text: str) -> tuple[float, ...]:
    """``--window CENTER,WIDTH``: two numbers."""
    return _numbers(text, 2, "CENTER,WIDTH (two numbers, e.g. 40,400)")


def split_ratios(text: str) -> tuple[float, ...]:
    """``--split-ratios TRAIN,VAL,TEST``: three numbers (their sum is checked by the config)."""
    return _numbers(text, 3, "TRAIN,VAL,TEST (three numbers summing to 1, e.g. 0.8,0.1,0.1)")


def image_size(text: str) -> int | tuple[int, ...]:
    """``--size S`` (images S x S) or ``--size D,H,W`` (volumes): whole numbers."""
    parts = text.split(",")
    if len(parts) not in (1, 3) or not all(v.strip().isdigit() for v in parts):
        raise argparse.ArgumentTypeError(f"takes S (an image side in pixels, e.g. 64) or D,H,W (a volume's sides in "
                                         f"voxels, e.g. 32,32,32), got '{text}'")
    values = tuple(int(v) for v in parts)
    return values[0] if len(values) == 1 else values


def epsilon_list(text: str) -> tuple[float | None, ...]:
    """``1,3,10,inf``: numbers (inf: no DP, None) separated by commas (their range is checked by the config)."""
    out: list[float | None] = []
    for v in (v.strip().lower() for v in text.split(",")):
        try:
            out.append(None if v in ("inf", "∞") else float(v))
        except ValueError:
            raise argparse.ArgumentTypeError(f"takes numbers or inf separated by commas (e.g. 1,3,10,inf), got "
                                             f"'{text}'") from None
    return tuple(out)


def int_list(text: str) -> tuple[int, ...]:
    """``1,2,4``: whole numbers separated by commas (their range is checked by the config)."""
    parts = [v.strip() for v in text.split(",")]
    if not parts or not all(v.isdigit() for v in parts):
        raise argparse.ArgumentTypeError(f"takes whole numbers separated by commas (e.g. 1,2,4), got '{text}'")
    return tuple(int(v) for v in parts)


def spacing(text: str) -> tuple[float, ...]:
    """``--spacing X,Y,Z``: three voxel sizes in mm (positive: checked by the config)."""
    return _numbers(text, 3, "three voxel sizes in mm, e.g. 2,2,2")


def nifti_slice(text: str) -> str:
    """``--slice AXIS[:INDEX|mid|all]``."""
    spec = text.strip().lower()
    if not _SLICE.match(spec):
        raise argparse.ArgumentTypeError(f"takes AXIS[:INDEX|mid|all] with AXIS 0, 1 or 2 (e.g. 2:mid), got '{text}'")
    return spec


def data_options(p: argparse.ArgumentParser, *, size: bool = True) -> None:
    """``--data`` and how it is read (``size=False`` where the command has a ``--size`` of its own)."""
    g = p.add_argument_group("your own images (instead of MedMNIST; see the README)")
    g.add_argument("--data", default=None, metavar="PATH",
                   help="a folder of images (PNG, JPEG, TIFF, BMP, DICOM, NIfTI), one such file, or a CSV/JSON "
                        "datalist of them, read instead of a MedMNIST --dataset")
    g.add_argument("--data-format", default=None, choices=DATA_FORMATS,
                   help="the kind of --data (default: detected from the path)")
    if size:
        g.add_argument("--size", type=image_size, default=None, metavar="S|D,H,W",
                       help="with --data: resize the images to S x S (default: their most common side, at most 256), "
                            "or, with three sides D,H,W, read the NIfTI files as volumes of that size; for a MedMNIST "
                            "flag: 28, 64, 128 or 224 reads the MedMNIST+ file <flag>_<S>.npz (default 28)")
    g.add_argument("--fit", default=None, choices=sorted({*FITS, *VOLUME_FITS}),
                   help="how a non-square image is made square: crop its centre or pad it; how a volume is brought to "
                        "D,H,W: crop (crop or pad each axis about the centre: the anatomy keeps its scale) or resize "
                        "(default: crop)")
    g.add_argument("--window", type=window, default=None, metavar="CENTER,WIDTH",
                   help="the intensity window of DICOM, NIfTI and 16-bit images in their own units, e.g. 40,400 "
                        "(Hounsfield units) (default: the file's window, else its 0.5-99.5 percentiles)")
    g.add_argument("--slice", type=nifti_slice, default=None, metavar="AXIS[:INDEX|mid|all]",
                   help="the NIfTI slice: AXIS 0, 1 or 2, then an index, mid or all (default: 2:mid)")
    g.add_argument("--frames", default=None, choices=FRAMES,
                   help="a multi-frame DICOM or TIFF: single refuses it, all takes one image per frame "
                        "(default: single)")
    g.add_argument("--labels", default=None, metavar="auto|folders|none|FILE.csv",
                   help="the class labels: auto (a labels.csv at the data's root, else class subfolders), folders, "
                        "none, or a CSV file,label[,patient] relative to the data (default: auto)")
    g.add_argument("--split-ratios", type=split_ratios, default=None, metavar="TRAIN,VAL,TEST",
                   help="where the data names no splits: the shares drawn into train, val and test, a patient's "
                        "images kept in one (default: 0.8,0.1,0.1)")
    g.add_argument("--skip-unreadable", action="store_true", default=None,
                   help="skip the files that cannot be read, naming them (default: refuse the data)")
    v = p.add_argument_group("volumes (--data a folder of NIfTI volumes or of DICOM series folders, --size D,H,W; see "
                             "the README)")
    v.add_argument("--spacing", type=spacing, default=None, metavar="X,Y,Z",
                   help="resample every volume to this voxel size in mm before --fit (default: keep the file's)")
    v.add_argument("--volume-index", type=int, default=None, metavar="K",
                   help="take volume K (0-based) of a 4D file (default: refuse 4D files)")
    v.add_argument("--series", default=None, metavar="UID",
                   help="DICOM folders: the SeriesInstanceUID to take where a folder holds several series (default: "
                        "refuse such a folder, listing its series)")
    v.add_argument("--patient-pattern", default=None, metavar="REGEX",
                   help="a regular expression with one group that finds the patient ID in a file name, e.g. "
                        "'^(IXI\\d{3})', so a patient's volumes stay in one split (default: one patient per file)")
    v.add_argument("--attributes", default=None, metavar="FILE.csv",
                   help="a CSV of the scans' attributes (e.g. IXI_Demog_n181.csv: MRID,Age,Sex), its first column "
                        "naming each scan (the file name up to the first '_', or without extension, or the patient); "
                        "a path, or a file name inside --data")
    v.add_argument("--half", default=None, choices=("public", "private"),
                   help="only the public or the private half of the patients (a fixed draw of their IDs, the same for "
                        "every run of the data): pretrain on one, audit the other (default: all)")
    v.add_argument("--condition-on", dest="condition", type=columns, default=None, metavar="COL[,COL...]",
                   help="with --attributes: condition the score model on these columns (at most one categorical, "
                        "e.g. Sex, as a class embedding; numeric ones, e.g. Age, as covariates); volumes without a "
                        "value are left out. The audit then counts x_p's copies sampled with the training set's "
                        "attributes and with x_p's own")


def saf_options(p: argparse.ArgumentParser) -> None:
    """The size, ring width, grey level and contrast of the SAF put on x_p."""
    g = p.add_argument_group("the synthetic anatomical fingerprint (SAF) on x_p")
    g.add_argument("--saf-radius", type=saf_radius, default=None, metavar="R",
                   help="pixels (4px or 4) or a percentage of the image side (12%%) (default: 3/28 of the side, "
                        "3 px at 28 px)")
    g.add_argument("--saf-width", type=saf_width, default=None, metavar="W",
                   help="ring thickness in pixels, 2px or 2 (ring only; default: half the radius)")
    g.add_argument("--saf-intensity", type=float, default=None,
                   help="grey level in [0, 1] (default: chosen for contrast: 0.5 where it differs enough from x_i "
                        "under the SAF, else the extreme grey that does)")
    g.add_argument("--saf-contrast", type=float, default=None,
                   help="the least mean absolute difference in [0, 1] between the SAF and x_i under it when the "
                        "grey level is chosen (default: 0.2)")
    canary_options(p)


def canary_options(p: argparse.ArgumentParser) -> None:
    """How many canary candidates, their inclusion probability and their numbers of copies."""
    c = p.add_argument_group("many canaries in one run (README: Many canaries)")
    c.add_argument("--canaries", type=int, default=None, metavar="M",
                   help="M canary candidates, each a real image of its own patient with its own SAF (default: 1, "
                        "x_p alone, always included); the audit adds each one's count, the dose-response and the "
                        "one-run lower bound on epsilon")
    c.add_argument("--duplicates", type=int_list, default=None, metavar="D,D,...",
                   help="the numbers of copies an included candidate may have, one drawn per candidate (default: 1)")
    c.add_argument("--inclusion", type=float, default=None, metavar="P",
                   help="the probability that a candidate is included in training (default with --canaries: 0.5, "
                        "which the one-run epsilon bound needs)")


def data_given(args: argparse.Namespace) -> list[str]:
    """The dests of the data and SAF options given on the command line."""
    return [k for k in (*DATA_FIELDS, *SAF_OPTIONS) if getattr(args, k, None) is not None]


def data_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The PrepareConfig fields the data and SAF options give (None: not given); ``--dataset`` and ``--data``
    together are refused."""
    if getattr(args, "dataset", None) is not None and getattr(args, "data", None) is not None:
        raise DiffauditError("give --dataset (a MedMNIST flag) or --data (your own images), not both")
    out = {k: getattr(args, k, None) for k in (*DATA_FIELDS, "saf_width", "saf_intensity", "saf_contrast", "canaries",
                                               "duplicates", "inclusion")}
    if (out.get("canaries") or 1) > 1 and out.get("inclusion") is None:
        out["inclusion"] = 0.5  # many canaries: the one-run bound's inclusion unless told otherwise
    radius = getattr(args, "saf_radius", None)
    out["saf_radius"] = radius.pixels if radius is not None else None
    out["saf_size"] = radius.fraction if radius is not None else None
    return out


def with_data_options(cfg: PrepareConfig, args: argparse.Namespace) -> PrepareConfig:
    """``cfg`` with the data and SAF options given; a radius given as a share of the side replaces one in pixels."""
    cfg = override(cfg, **data_settings(args))
    radius = getattr(args, "saf_radius", None)
    if radius is not None and radius.fraction is not None:
        cfg = dataclasses.replace(cfg, saf_radius=None)
    return cfg
