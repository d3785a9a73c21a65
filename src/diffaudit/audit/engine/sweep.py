"""``diffaudit sweep``: one audit per (dataset, N_D) cell, then one combined report with the paper's Table 1
(reproductions against N_D), Table 2 (NLL, FID, SAF %, ID % per dataset) and the q_M(t) curves overlaid.

Cells live in ``<out>/<dataset>-n<N_D>/`` (``-nall`` for the whole split) and are ordinary audit run
directories: a killed sweep continues where it stopped, and a cell can be opened on its own. The FID extractor
of a dataset is trained once in ``<out>/extractors/<dataset>/`` and shared by its cells, so their FIDs are
comparable. A sweep over the user's own images (``prepare.data``) runs over N_D on that one source, its cells
named after the source's folder or file (:func:`source_name`).

The privacy sweep (:func:`run_privacy_sweep`) does the same over (epsilon, public pretraining) on one dataset and
N_D: ``<out>/eps<epsilon>-{scratch,pretrained}/``, the public model in ``<out>/public/``, and one table of FID,
utility, |q| with its interval, t', the formal bound and the epsilon reached.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ...config import MIN_N_TRAIN, AuditConfig, DPConfig, PrepareConfig
from ...data.medmnist import open_dataset
from ...data.conditions import conditioned_model, training_conditions
from ...data.prepare import build_training_set, number_of_classes, number_of_classes_for, prepare_run
from ...data.volumes.prepared import is_volume_config
from ...diffusion.sde import make_sde
from ...errors import DiffauditError
from ...io import read_json, write_json
from ..report.plots import plot_q_m
from ..report.render import excess_warning, fid_cell, fmt, write_blocks
from .pipeline import run_audit
from .stages import Context, check_audit_config, check_audit_data, fit_score_model


UNRELIABLE_FID = ("* marks an unreliable FID: fewer reference images than feature dimensions, so the covariance is "
                  "singular (see the cell's report).")


def cell_name(dataset: str, n_train: int | None) -> str:
    return f"{dataset}-n{'all' if n_train is None else n_train}"


def source_name(prepare: PrepareConfig) -> str:
    """What names a sweep's cells and shared extractor: the MedMNIST flag, or the name of the user's folder or file
    (without its suffixes, other characters than letters, digits, '.', '_' and '-' replaced)."""
    if prepare.data is None:
        return prepare.dataset
    name = Path(prepare.data).name.split(".")[0]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "data"


def _source_cells(base: AuditConfig, n_trains: Sequence[int | None], *, class_conditional: bool,
                  data_root: str | None) -> list[tuple[str, AuditConfig]]:
    """The cells of a sweep over N_D on the user's own images; the prepare stage reads the source and refuses an
    N_D beyond its split."""
    model = base.model
    if class_conditional:
        model = dataclasses.replace(model, num_classes=number_of_classes_for(base.prepare, data_root=data_root))
    cells = []
    for n_train in n_trains:
        if n_train is not None and n_train < MIN_N_TRAIN:
            raise DiffauditError(f"--n-train {n_train} is too small; use values of at least {MIN_N_TRAIN}, or 'all'")
        cfg = dataclasses.replace(base, model=model, prepare=dataclasses.replace(base.prepare, n_train=n_train))
        check_audit_config(cfg)
        cells.append((cell_name(source_name(base.prepare), n_train), cfg))
    return cells


def sweep_cells(base: AuditConfig, *, datasets: Sequence[str] = (), n_trains: Sequence[int | None],
                class_conditional: bool = False, data_root: str | None = None, download: bool = False,
                log: Callable[[str], None] = print) -> list[tuple[str, AuditConfig]]:
    """(folder name, config) of every cell, each checked against its dataset before any folder is made: the file
    is there (or downloaded with ``download``), N_D fits the split, and a class-conditional model gets the class
    count of its own dataset. With ``base.prepare.data`` (the user's own images) the cells are the N_D values on
    that source, and ``datasets`` must be empty."""
    if base.prepare.data is not None:
        if datasets:
            raise DiffauditError("give --datasets (MedMNIST flags) or --data (your own images), not both")
        if not n_trains:
            raise DiffauditError("a sweep needs at least one N_D")
        if len(set(n_trains)) != len(n_trains):
            raise DiffauditError("--n-train must not repeat a value")
        return _source_cells(base, n_trains, class_conditional=class_conditional, data_root=data_root)
    if not datasets or not n_trains:
        raise DiffauditError("a sweep needs at least one dataset and one N_D")
    if len(set(datasets)) != len(datasets) or len(set(n_trains)) != len(n_trains):
        raise DiffauditError("--datasets and --n-train must not repeat a value")
    cells = []
    for dataset in datasets:
        data = open_dataset(dataset, data_root=data_root, download_missing=download, size=base.prepare.size, log=log)
        n_split = len(data.images(base.prepare.split))
        model = base.model
        if class_conditional:
            model = dataclasses.replace(model, num_classes=number_of_classes(dataset, data_root=data_root,
                                                                             size=base.prepare.size))
        for n_train in n_trains:
            if n_train is not None and not MIN_N_TRAIN <= n_train <= n_split:
                raise DiffauditError(f"--n-train {n_train} does not fit {dataset}, whose {base.prepare.split} split has "
                                     f"{n_split} images; use values between {MIN_N_TRAIN} and {n_split}, or 'all'")
            cfg = dataclasses.replace(base, model=model,
                                      prepare=dataclasses.replace(base.prepare, dataset=dataset, n_train=n_train))
            check_audit_config(cfg)
            check_audit_data(cfg, data)
            cells.append((cell_name(dataset, n_train), cfg))
    return cells


def run_sweep(out: Path, base: AuditConfig, *, datasets: Sequence[str] = (), n_trains: Sequence[int | None],
              class_conditional: bool = False, device: str = "auto", data_root: str | None = None,
              download: bool = False, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run (or continue) every cell, then write ``sweep.json`` and the combined report into ``out``."""
    out = Path(out)
    cells = sweep_cells(base, datasets=datasets, n_trains=n_trains, class_conditional=class_conditional,
                        data_root=data_root, download=download, log=log)
    for name, cfg in cells:
        log(f"== sweep cell {name} ==")
        run_audit(Context(run=out / name, cfg=cfg, device=device, data_root=data_root, progress=progress, log=log,
                          shared_extractor=out / "extractors" / source_name(cfg.prepare)))
    return write_sweep_report(out, [out / name for name, _ in cells])


def write_sweep_report(out: Path, cells: Sequence[Path]) -> dict:
    rows = []
    for run in cells:
        r = read_json(run / "results.json")
        m = run / "classifiers" / "metrics.json"
        r["classifiers"] = read_json(m) if m.exists() else {}
        r["cell"] = run.name
        rows.append(r)
    figure = plot_q_m([(f"{r['dataset']} N_D = {r['n_train']}", r["t_prime"]) for r in rows if r.get("t_prime")],
                      out / "q_M.png")
    table1 = [[r["dataset"], r["n_train"], r["reproduction"]["n_samples"], fmt(r["reproduction"]["c_p"]),
               fmt(r["reproduction"]["c_id"]), r["reproduction"]["q"], fmt(r["reproduction"]["expected_q"]),
               fmt(r["reproduction"]["p_value"]),
               f"[{fmt(r['reproduction']['rate_ci95'][0])}, {fmt(r['reproduction']['rate_ci95'][1])}]",
               fmt(r["t_prime"]["value"], 2), fmt(r["t_prime"]["value_alpha"], 2), fmt(r["t_prime"]["bound"])]
              for r in rows]
    table2 = [[r["dataset"], r["n_train"], fmt(r["nll_bpd"]["test"]["mean"], 4), fmt(r["nll_bpd"]["train"]["mean"], 4),
               fmt(r["nll_bpd"]["x_p"] and r["nll_bpd"]["x_p"]["mean"], 4), fid_cell(r["fid"], "train"),
               fid_cell(r["fid"], "test"), (r["fid"].get("extractor") or {}).get("name", "not computed"),
               fmt(100 * r["classifiers"]["c_p"]["test_accuracy"] if r["classifiers"] else None),
               fmt(100 * r["classifiers"]["c_id"]["train_accuracy"] if r["classifiers"] else None)] for r in rows]
    blocks = [("h", 1, "diffaudit sweep"),
              ("p", f"{len(rows)} audits; each cell's own report is in its folder ({', '.join(r['cell'] for r in rows)})."),
              ("h", 2, "Table 1: reproductions of x_p against N_D"),
              ("table", ["dataset", "N_D", "N", "|c_p+|", "|c_id+|", "|q|", "E|q|", "p-value", "95% interval", "t'", "t'_α",
                         "bound"], table1),
              ("p", "H0: p = 1/N_D against p < 1/N_D (exact one-sided binomial test); Clopper–Pearson intervals for the "
                    "reproduction probability."),
              ("h", 2, "Table 2: likelihood, FID and classifier accuracies"),
              ("table", ["dataset", "N_D", "NLL test", "NLL train", "NLL x_p", "FID train", "FID test", "FID extractor",
                         "SAF %", "ID %"], table2),
              ("p", "NLL in bits/dim (probability-flow ODE, uniform dequantisation). FIDs are comparable only within one "
                    "extractor; a dataset's cells share theirs. FIDs carry 95% bootstrap intervals; " + UNRELIABLE_FID),
              ("h", 2, "q_M(t) of every cell"),
              ("img", figure.name, "q_M(t) with 95% intervals; t' solid, t'_α dashed, chance levels dotted")]
    paths = write_blocks(out, blocks)
    summary = {"cells": [r["cell"] for r in rows], "table1": table1, "table2": table2,
               "report": {k: p.name for k, p in paths.items()}}
    write_json(out / "sweep.json", summary)
    return summary


def pretrain_public(out: Path, base: AuditConfig, *, dataset: str, split: str, device: str = "auto",
                    data_root: str | None = None, progress: bool = True, log: Callable[[str], None] = print) -> Path:
    """Train the model non-privately on a public set (a whole split of a dataset, labels included for a
    class-conditional model) into ``<out>/train``; kept when done. Returns the train folder."""
    data = open_dataset(dataset, data_root=data_root, size=base.prepare.size if base.prepare.data is None else None)
    images = data.images(split)
    if base.prepare.channels == 3 and images.shape[1] == 1:
        images = np.repeat(images, 3, axis=1)
    labels = np.asarray(data.labels(split)).reshape(len(images), -1)[:, 0] if base.model.num_classes else None
    log(f"public pretraining on {len(images)} images of {dataset}/{split}")
    fit_score_model(out / "train", np.ascontiguousarray(images), labels=labels, model_cfg=base.model,
                    train_cfg=base.train, sde=make_sde(base.sde), data_id=f"public:{dataset}:{split}:{data.md5}",
                    device=device, progress=progress)
    return out / "train"


def pretrain_public_half(out: Path, base: AuditConfig, *, device: str = "auto", progress: bool = True,
                         log: Callable[[str], None] = print) -> Path:
    """Train the model non-privately on every volume of the public half of the patients of ``base``'s data
    (``--half public``: prepared into ``<out>/data`` without a fingerprint) into ``<out>/train``. Returns the train
    folder."""
    prep = dataclasses.replace(base.prepare.control(), half="public", n_train=None, split_ratios=(1.0, 0.0, 0.0))
    manifest = prepare_run(out / "data", prep, log=log, progress=progress)
    images = build_training_set(manifest)
    log(f"public pretraining on {len(images)} volumes of the public half of the patients")
    labels = training_conditions(manifest, None) if base.model.covariates or base.prepare.condition else None
    model = conditioned_model(base.model, manifest)
    fit_score_model(out / "train", images, labels=labels, model_cfg=model, train_cfg=base.train,
                    sde=make_sde(base.sde), data_id=f"public-half:{manifest['cache']['sha256']}", device=device,
                    progress=progress)
    return out / "train"


def run_privacy_sweep(out: Path, base: AuditConfig, *, epsilons: Sequence[float | None], pretrain: Sequence[bool],
                      public_dataset: str | None, public_split: str = "train", device: str = "auto",
                      data_root: str | None = None, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """One audit per (epsilon, pretraining) cell: epsilon None trains non-privately; pretraining starts from a
    model trained on the public set (a MedMNIST split; None only without pretraining) first. For volumes of your own
    (``--data``, ``--size D,H,W``) the public set is the public half of the patients and every cell audits the
    private half (``--half``), so no patient is on both sides. Writes ``privacy_sweep.json`` and the report with one
    table: FID, utility, |q| with its interval, t', the formal bound."""
    out = Path(out)
    if not epsilons or not pretrain:
        raise DiffauditError("a privacy sweep needs at least one epsilon and one pretraining choice")
    if any(e is not None and not e > 0 for e in epsilons):
        raise DiffauditError(f"epsilon must be positive (or inf), got {list(epsilons)}")
    # volumes of a folder, pretrained with no public dataset named: the public set is the other half of the patients
    halves = (any(pretrain) and public_dataset is None and is_volume_config(base.prepare)
              and Path(base.prepare.data).is_dir())
    if halves:
        if base.prepare.half == "public":
            raise DiffauditError("the cells audit the private half of the patients and pretrain on the public one; "
                                 "leave --half out (or give --half private)")
        base = dataclasses.replace(base, prepare=dataclasses.replace(base.prepare, half="private"))
    if any(pretrain) and public_dataset is None and not halves:
        raise DiffauditError("public pretraining needs a public MedMNIST set: give --public-dataset, or --pretrain no")
    if (base.prepare.data is None and public_dataset == base.prepare.dataset
            and public_split == base.prepare.split):
        raise DiffauditError("the public pretraining set must differ from the private one: choose another "
                             "--public-dataset or --public-split")
    n_train = base.prepare.n_train
    if any(e is not None for e in epsilons) and n_train is not None and base.train.batch_size > n_train:
        raise DiffauditError(f"DP-SGD samples each image with rate batch size / N_D; the batch size "
                             f"{base.train.batch_size} exceeds N_D = {n_train}: lower it (e.g. --config with "
                             "train.batch_size)")
    public = None
    if any(pretrain) and halves:
        public = pretrain_public_half(out / "public", base, device=device, progress=progress, log=log)
    elif any(pretrain):
        public = pretrain_public(out / "public", base, dataset=public_dataset, split=public_split, device=device,
                                 data_root=data_root, progress=progress, log=log)
    cells = []
    for eps, pre in itertools.product(epsilons, pretrain):
        name = f"eps{'inf' if eps is None else f'{eps:g}'}-{'pretrained' if pre else 'scratch'}"
        cfg = dataclasses.replace(base, dp=None if eps is None else DPConfig(epsilon=eps),
                                  pretrained=str(public) if pre else None)
        log(f"== privacy sweep cell {name} ==")
        run_audit(Context(run=out / name, cfg=cfg, device=device, data_root=data_root, progress=progress, log=log,
                          shared_extractor=out / "extractors" / source_name(base.prepare)))
        cells.append((name, eps, pre))
    rows = []
    for name, eps, pre in cells:
        r = read_json(out / name / "results.json")
        rep, util, priv = r["reproduction"], r.get("utility"), r.get("privacy")
        lower = (r.get("canaries") or {}).get("epsilon")
        model = out / name / "train" / "model.json"
        # the reference detector alone writes no privacy section: the model's own record gives its epsilon
        spent = (priv["epsilon"] if priv else
                 ((read_json(model).get("dp") or {}).get("epsilon") if model.exists() else None))
        rows.append(["∞" if eps is None else f"{eps:g}", "yes" if pre else "no", fid_cell(r["fid"], "train"),
                     fid_cell(r["fid"], "test"), fmt(util and util["synthetic"]["accuracy"]),
                     fmt(util and util["synthetic"]["auroc"]), f"{rep['q']}/{rep['n_samples']}",
                     f"[{fmt(rep['rate_ci95'][0])}, {fmt(rep['rate_ci95'][1])}]", fmt(r["t_prime"]["value"], 2),
                     fmt(priv and priv["bound_dpsgd"]), fmt(spent and spent["prv"]),
                     fmt(lower and lower["epsilon_lower"]), "excess: see its report" if excess_warning(r) else ""])
    headers = ["ε target", "pretrained", "FID train", "FID test", "utility acc.", "utility AUROC", "|q|",
               "95% interval", "t'", "formal bound", "ε (PRV)", "ε lower (canaries)", "caution"]
    blocks = [("h", 1, "diffaudit privacy sweep"),
              ("p", f"{len(rows)} audits of {source_name(base.prepare)} (N_D = {base.prepare.n_train}); "
                    + (f"public pretraining on {public_dataset}/{public_split}. " if public_dataset is not None else "")
                    + ("the cells audit the private half of the patients; public pretraining on the other half. "
                       if halves else "")
                    + "Each cell's report is in its folder."),
              ("table", headers, rows),
              ("p", "Formal bound: the DP-SGD reconstruction bound 1 - f(κ) on the probability that one sample is x_p, "
                    "with κ from the detectors' false positives (see each cell's report). Utility: a classifier trained "
                    "on the synthetic images, tested on the real test split (class-conditional models only). ε lower: "
                    "the one-run bound of a --canaries sweep at 95% (each cell's report). FIDs "
                    "carry 95% bootstrap intervals; " + UNRELIABLE_FID)]
    paths = write_blocks(out, blocks)
    summary = {"cells": [c[0] for c in cells], "headers": headers, "rows": rows,
               "report": {k: p.name for k, p in paths.items()}}
    write_json(out / "privacy_sweep.json", summary)
    return summary
