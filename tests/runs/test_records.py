"""Run records: what every record says produced it."""

from __future__ import annotations

from pathlib import Path

import peftbench
from peftbench.runs import records


def test_the_git_revision_vouches_for_the_whole_package() -> None:
    """'-dirty' must look at every module's code, wherever in the package the record is written from."""
    assert records.PACKAGE == Path(peftbench.__file__).resolve().parent


def test_a_record_names_the_versions_that_produced_it() -> None:
    environment = records.environment_record()
    assert environment["peftbench"] == peftbench.__version__
    assert {"torch", "transformers", "peft", "git_revision", "time"} <= set(environment)
