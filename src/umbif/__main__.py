"""``python -m umbif`` runs the command line, like the ``umbif`` script."""

from umbif.cli import app

app()
