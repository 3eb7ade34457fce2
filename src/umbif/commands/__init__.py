"""Downstream commands (embed, probe, evaluate, finetune, report, predict, benchmark, demo).

Each module registers its commands on :data:`umbif.cli.app` when imported (``umbif.cli`` imports
this package last), so each stays next to the library code it calls and ``cli.py`` stays short.
"""

from umbif.commands import adapt, benchmark, finetune, predict, report  # noqa: F401  (registers the commands)
