"""Reproduction studies: from a study file to its results page.

    study file (YAML) ─loader→ design ─plan→ steps ─executors run them→ run folders
    run folders ─summary→ summary.json ─page→ the page (Markdown, plots, interactive HTML)

- ``design``: what a study is (model, data, shared budget, methods with their learning rates, evaluations).
- ``loader``: reads and validates a study file (the shipped ones are ``*.yaml`` beside these modules) into a design.
- ``plan``: a design, its seeds and its folder become steps, each a ``peftbench`` command with its dependencies,
  which ``peftbench.executors`` run.
- ``summary``: the study's numbers, gathered from its finished runs and evaluations into ``summary.json``.
- ``page``: the Markdown page, plots and interactive page, rendered from the summary alone.
"""
