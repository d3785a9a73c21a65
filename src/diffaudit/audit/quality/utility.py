"""The ``utility`` stage: is the synthetic data of a class-conditional model useful? (the seeds' utility test)

A ResNet10 label classifier (the same recipe as the FID domain extractor) is trained once on the generated images
with the labels they were generated for, and once on the real training set D_p; both are tested on the real test
split. Accuracy and AUROC (one-vs-rest, macro-averaged for more than two classes; torchmetrics) of "train on
synthetic, test on real" beside "train on real, test on real" say how much of the task the synthetic data keeps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...data.dataset import open_data
from ...data.prepare import build_training_set, heldout_split, load_manifest, split_images, training_labels
from ...device import resolve_device
from ...errors import DiffauditError
from ...generate import iter_labelled_shards
from ...io import read_json, write_json
from ..results import update_results
from .fid import evaluate_classifier, train_extractor


def run_utility(run: Path, samples: Path, extractor_cfg, *, data_root=None, device: str = "auto",
                progress: bool = True) -> dict:
    manifest = load_manifest(run)
    meta = read_json(run / "train" / "model.json")
    n_classes = meta["model"].get("num_classes", 0)
    if not n_classes:
        raise DiffauditError("the utility test needs a class-conditional model (--class-conditional)")
    dev = resolve_device(device)
    parts = list(iter_labelled_shards(samples))
    synth_x = np.concatenate([p[1] for p in parts])
    synth_y = np.concatenate([p[2] for p in parts])
    data = open_data(manifest, data_root=data_root)
    real_x, real_y = build_training_set(manifest, data=data), training_labels(manifest, data=data)
    test_split = heldout_split(manifest, "test")
    test_x = split_images(manifest, test_split, data=data)
    test_y = np.asarray(data.labels(test_split)).reshape(-1)
    out = {}
    for name, (x, y) in (("synthetic", (synth_x, synth_y)), ("real", (real_x, real_y))):
        net = train_extractor(run / "utility" / name, x, y, name=f"{manifest['dataset']}-{name}", cfg=extractor_cfg,
                              device=dev, progress=progress, n_classes=n_classes)
        out[name] = {**evaluate_classifier(net, test_x, test_y, n_classes, dev), "n_train": int(len(x))}
    section = {**out, "classes": n_classes, "test_split": test_split,
               "majority_class_share": float(np.bincount(test_y.astype(np.int64)).max() / len(test_y)),
               "classifier": "ResNet10 label classifier (the FID domain extractor's recipe), trained on each set"}
    write_json(run / "utility" / "utility.json", section)
    update_results(run, manifest, utility=section)
    return section
