"""`umbif report` commands (filled in by its issue work)."""

from umbif.cli import app  # noqa: F401
