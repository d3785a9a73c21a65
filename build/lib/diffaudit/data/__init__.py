"""MedMNIST images, the synthetic anatomical fingerprint, and the training-set manifest."""
