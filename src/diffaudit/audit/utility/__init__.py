"""What the synthetic data is worth to a classifier trained under DP: five regimes (real, synthetic, real with
DP-SGD, real + synthetic with DP-SGD, synthetic-pretrained then DP fine-tuned) over the classifier's ε."""
