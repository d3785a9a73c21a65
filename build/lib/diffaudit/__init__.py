"""diffaudit: can a diffusion model trained on patient images reproduce one of them, and how likely is that?

Implements the adversarial-fingerprinting audit of Dombrowski & Kainz, "Quantifying Sample Anonymity in
Score-Based Generative Models with Adversarial Fingerprinting".
"""

__version__ = "0.1.0"
