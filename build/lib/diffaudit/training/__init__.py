"""Training the score model: the loop with EMA, checkpoints and exact resume."""
