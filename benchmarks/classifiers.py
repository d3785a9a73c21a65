"""Detector inference throughput: the adversary's ResNets and the reference nearest-neighbour detector.

Prints images/s for classifying uint8 28x28 images (the count's inner loop) per architecture, and the FLOPs
per image. Usage: python benchmarks/classifiers.py [--device cpu|cuda] [--channels 1] [--seconds 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from diffaudit.adversary.classifiers import ARCHS, ClassifierDetector, build_classifier
from diffaudit.adversary.detectors import NearestNeighbourDetector
from diffaudit.config import ClassifierConfig


def rate(fn, images: np.ndarray, seconds: float) -> float:
    fn(images[:64])  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(images)
        n += len(images)
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch, args.channels, 28, 28), dtype=np.uint8)
    print(f"device {args.device}, {torch.get_num_threads()} threads, batch {args.batch}")
    for arch in ARCHS:
        net = build_classifier(ClassifierConfig(arch=arch), args.channels).to(args.device).eval()
        det = ClassifierDetector(net, image_shape=images.shape[1:], batch_size=args.batch)
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            net(torch.zeros(1, args.channels, 28, 28, device=args.device))
        params = sum(p.numel() for p in net.parameters()) / 1e6
        print(f"{arch:9s} {params:6.2f} M params {fc.get_total_flops() / 1e6:7.1f} MFLOP/img "
              f"{rate(det, images, args.seconds):9.0f} img/s")
    nn = NearestNeighbourDetector(images[0], rng.integers(0, 256, (1000, args.channels, 28, 28), dtype=np.uint8))
    print(f"nearest-neighbour (one target) {rate(nn, images, args.seconds):9.0f} img/s")


if __name__ == "__main__":
    main()
