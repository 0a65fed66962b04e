"""A tiny study file and a graph of steps, for the tests of studies and executors."""

from __future__ import annotations

from peftbench.studies.plan import Step

TINY_STUDY = """\
summary: a tiny study
model: smollm2-135m
budget: {max_train_samples: 16, r_ab: 4}
methods:
- {method: lora, lr: 3e-4, lr_source: LLM-Adapters}
- {method: ia3, lr: 3e-3, lr_source: T-Few}
evaluations:
- {mode: loglik, samples: 4}
"""


def step_graph() -> list[Step]:
    """Two trainings, their evaluations and an analysis of both; b's training has a bad flag."""
    return [Step("a.train", "a training", ("train",)), Step("b.train", "b training", ("train", "--bad")),
            Step("a.eval", "a evaluation", ("eval",), ("a.train",)),
            Step("b.eval", "b evaluation", ("eval",), ("b.train",)),
            Step("analysis", "analysis", ("analyze",), ("a.eval", "b.eval"))]  # fmt: skip
