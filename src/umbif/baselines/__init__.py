"""Baselines the UMBIF encoder is compared with, each a method of ``umbif.eval.methods`` scored on the same folds."""
