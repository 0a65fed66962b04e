"""What a study is: its model, data, shared budget, methods (each with its learning rate and the rate's source),
evaluations, seeds and how it is submitted to a cluster, as frozen dataclasses.

``peftbench.studies.loader`` reads them from study files; ``peftbench.studies.plan`` turns one into steps. Every
method of a study trains on the same seeded data sample with the same budget; only what a method entry sets differs
(its learning rate, with the rate's source, and any flag it alone changes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from peftbench.data.registry import resolve_names
from peftbench.errors import UserError
from peftbench.methods import METHOD_FLAGS, METHODS


@dataclass(frozen=True)
class MethodPlan:
    peft_type: str
    lr: float
    lr_source: str  # why this rate: the paper or recipe it follows
    train_settings: dict[str, Any] = field(default_factory=dict)  # RunConfig fields this method alone changes
    label: str = ""  # its name in the study (default: the method's): two variants of one method need two

    @property
    def name(self) -> str:
        return self.label or self.peft_type


@dataclass(frozen=True)
class EvalPlan:
    mode: str  # generate or loglik
    samples: int | None  # seeded sample per dataset (the same for every method); None: the whole test set
    settings: dict[str, Any] = field(default_factory=dict)  # other EvalConfig fields


@dataclass(frozen=True)
class SlurmSettings:
    """What each step asks Slurm for under ``--executor slurm`` (flags of the same names override them). None: not
    given, so the executor's default applies unless an ``sbatch`` option asks for it instead."""

    partition: str | None = None
    time_min: int | None = None  # default 24 h
    gpus_per_job: int | None = None  # for steps that use a GPU (default 1); analysis steps ask for none
    cpus_per_job: int | None = None  # default 8
    mem_gb_per_job: int | None = None  # default: the cluster's (DefMemPerCPU)
    sbatch: tuple[str, ...] = ()  # more sbatch options, e.g. "--account=abc"


@dataclass(frozen=True)
class PublishedRows:
    """The published rows a study reproduces: our method name -> (the source table's method, its rank)."""

    source: str  # the table's file name under peftbench/published, e.g. hira_iclr2025_table1
    model: str  # its model column
    rows: dict[str, tuple[str, int | None]]


@dataclass(frozen=True)
class StudyDesign:
    name: str
    summary: str
    model_name: str
    dataset: str
    train_settings: dict[str, Any]  # RunConfig fields shared by every method: the common budget
    methods: tuple[MethodPlan, ...]  # the study's methods unless --methods chooses
    evaluations: tuple[EvalPlan, ...]
    more_methods: tuple[MethodPlan, ...] = ()  # what --methods can add: each method's rate and its source
    benchmarks: str = "all"
    seeds: int = 1
    zero_shot: bool = True
    needs_gpu: bool = False
    offline: bool = True  # local files only: the hub is not asked (it would retry for minutes without a network)
    cost: str = ""  # expected time, and how it was obtained
    differences: tuple[str, ...] = ()  # how its defaults compare with the official code
    notes: tuple[str, ...] = ()
    published: PublishedRows | None = None
    slurm: SlurmSettings = SlurmSettings()
    hub_revisions: str | None = None  # --hub_revisions of every run and evaluation: the repositories' pinned commits
    source: str = ""  # the file it was read from

    @property
    def all_plans(self) -> dict[str, MethodPlan]:
        """Every method the study has a command for (its own and what --methods can add), by name."""
        return {plan.name: plan for plan in (*self.methods, *self.more_methods)}

    def run_settings(self, plan: MethodPlan) -> dict[str, Any]:
        """A method's RunConfig fields: the shared budget (less the method flags the method is not built from, and
        the flags it refuses), then the method's own settings and rate."""
        takes, dropped = METHODS[plan.peft_type].flags, self.dropped_settings(plan.peft_type)
        shared = {
            k: v for k, v in self.train_settings.items() if (k not in METHOD_FLAGS or k in takes) and k not in dropped
        }
        return {"peft_type": plan.peft_type, "model_name": self.model_name, "dataset": self.dataset, **shared,
                **plan.train_settings, "lr": plan.lr, **self.pins()}  # fmt: skip

    def pins(self) -> dict[str, str]:
        """The hub_revisions flag of its commands, where the study pins any."""
        return {"hub_revisions": self.hub_revisions} if self.hub_revisions else {}

    def dropped_settings(self, peft_type: str) -> dict[str, str]:
        """Shared settings the method refuses (prefix tuning cannot checkpoint) -> why; they change memory, not
        what a step computes, and the plan says so."""
        refuses = METHODS[peft_type].refuses
        return {k: why for k, why in refuses.items() if self.train_settings.get(k)}

    def choose_methods(self, names: str | None) -> tuple[MethodPlan, ...]:
        """The plans of --methods (comma-separated, in that order), or the study's own methods."""
        if names is None:
            return self.methods
        known = self.all_plans
        chosen = [name.strip().lower() for name in names.split(",") if name.strip()]
        unknown = [name for name in chosen if name not in known]
        if unknown or not chosen:
            raise UserError(
                f"--methods: no learning rate for {', '.join(unknown) or 'an empty list'} in study {self.name}; "
                f"it has {', '.join(known)}"
            )
        return tuple(known[name] for name in dict.fromkeys(chosen))

    def with_overrides(
        self,
        model_name: str | None = None,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        datasets: str | None = None,
        eval_modes: str | None = None,
    ) -> StudyDesign:
        """The design with the command line's common knobs applied: a smoke test of any study in one line. It is
        another study, named apart (``<name>-custom``), so its folder and page never mix with the file's own."""
        given = (model_name, max_train_samples, max_eval_samples, datasets, eval_modes)
        design = (
            self if all(value is None for value in given) else dataclasses.replace(self, name=f"{self.name}-custom")
        )
        if model_name is not None:
            design = dataclasses.replace(design, model_name=model_name)
        if max_train_samples is not None:
            budget = {**design.train_settings, "max_train_samples": max_train_samples}
            design = dataclasses.replace(design, train_settings=budget)
        if max_eval_samples is not None:
            plans = tuple(dataclasses.replace(plan, samples=max_eval_samples) for plan in design.evaluations)
            design = dataclasses.replace(design, evaluations=plans)
        if datasets is not None:
            resolve_names(datasets)
            design = dataclasses.replace(design, benchmarks=datasets)
        if eval_modes is not None:
            modes = [mode.strip() for mode in eval_modes.split(",") if mode.strip()]
            have = [plan.mode for plan in design.evaluations]
            if not modes or any(mode not in have for mode in modes):
                raise UserError(f"--eval_modes {eval_modes}: study {self.name} evaluates by {', '.join(have)}")
            design = dataclasses.replace(design, evaluations=tuple(p for p in design.evaluations if p.mode in modes))
        return design
