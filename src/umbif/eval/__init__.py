"""Downstream evaluation: patient-level splits (``splits``), the harness that cross-validates methods on
them (``evaluate``), the registry of every method by name (``methods``), the metrics document
(``summary``) and the report (``report``). Tasks and their samples are data (``umbif.data.samples``);
metric functions are ``umbif.metrics``."""
