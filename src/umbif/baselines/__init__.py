"""Baselines the UMBIF encoder is compared with, each an ``umbif.eval.evaluate`` method on the same folds."""
