"""The commands of ``umbif``, one module per noun; :mod:`umbif.cli` assembles them into the app.

``common`` holds what they share (consoles, ``fail``, options, progress bars); the other modules import
only ``common`` and, inside each command, the library function the command calls.
"""
