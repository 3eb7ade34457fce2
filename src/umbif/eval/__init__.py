"""Downstream evaluation: tasks and their labelled samples, patient-level splits, metrics, reports."""
