"""The ``peftbench`` command: one module per command, each mapping its flags onto a dataclass and one function
(``app`` holds the table of commands, ``flags`` turns dataclass fields into flags)."""

import logging

# transformers (≥ 5.25) registers its hub kernels on import through the `kernels` package, which warns once per
# kernel that it skips a publisher check whenever the hub is offline: three lines on every command of an offline
# machine before a command can set up logging, and none about peftbench's work (it loads no hub kernel). Set before
# the commands import transformers.
logging.getLogger("kernels").setLevel(logging.ERROR)

from peftbench.cli.app import main  # noqa: E402 -- after the logger's level

__all__ = ["main"]
