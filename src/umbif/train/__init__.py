"""Training: augmentations, learning-rate schedule, checkpoints, distributed helpers, metric logs."""
