"""Differential privacy: reconstruction bounds from the hypothesis-testing view of DP, and DP-SGD training."""
