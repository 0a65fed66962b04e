"""The one exception type a user should ever see: a clear, one-line explanation of bad input."""


class UserError(ValueError):
    """Bad input from the user (a flag, a path, a model name).

    The CLI entry points print ``error: <message>`` on one line and exit with status 2;
    everything below the CLI raises this instead of calling ``sys.exit``. It subclasses
    ``ValueError`` so that library callers can catch it the usual way.
    """


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; the message says how to resume."""
