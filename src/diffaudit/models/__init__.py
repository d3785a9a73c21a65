"""Loading the model an audit is about: diffaudit's own, or one trained elsewhere (diffusers, latent, MONAI)."""
