"""Training: self-supervised pretraining (`pretrain`), the supervised multi-task loop (`supervised`,
`losses`), augmentations, learning-rate schedule, checkpoints, devices, distributed helpers, metric logs."""
