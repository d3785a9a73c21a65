"""The adversary: the fingerprint detector c_p, the identity classifier c_id, and detectors needing no training."""

from .detectors import Detector, NearestNeighbourDetector, call_detector

__all__ = ["Detector", "NearestNeighbourDetector", "call_detector"]
