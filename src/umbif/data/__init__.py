"""Data path: manifest (`manifest`), NIfTI reading (`io`), preprocessing (`preprocess`),
the exam cache (`cache`) and PyTorch datasets over it (`datasets`)."""
