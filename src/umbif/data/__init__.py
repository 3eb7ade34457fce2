"""Data path: manifest (`manifest`), NIfTI reading (`io`), preprocessing (`preprocess`), the exam cache
(`cache`: writing it, and the `Cache` reader) and PyTorch datasets over it (`datasets`), the labelled
samples of the glioma tasks (`samples`), ingest adapters (`sources`, `dicom`) and the synthetic cohort
(`synthetic`)."""
