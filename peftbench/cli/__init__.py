"""The ``peftbench`` command: one module per command, each mapping its flags onto a dataclass and one function
(``main`` holds the table of commands, ``flags`` turns dataclass fields into flags)."""

from peftbench.cli.main import main

__all__ = ["main"]
