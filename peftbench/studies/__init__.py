"""Studies as files: a YAML file says which model, data, methods, budget, seeds and evaluations a study runs.

    peftbench reproduce cpu-small                 # a study shipped with peftbench (peftbench/studies/*.yaml)
    peftbench reproduce path/to/my-study.yaml     # a researcher's own

A file is validated as it is read: an unknown key, a wrong type, an unknown method, benchmark or evaluation mode
is one ``error:`` line naming the file, the key and what is allowed. Every method of a study trains on the same
seeded data sample with the same budget; only what a method entry sets differs (its learning rate, with the
rate's source, and any flag it alone changes). ``peftbench.reproduce`` turns a design into commands.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from peftbench.config import EVAL_MODES, EvalConfig, RunConfig
from peftbench.data.registry import resolve_names
from peftbench.errors import UserError
from peftbench.methods import METHOD_FLAGS, METHODS
from peftbench.published import published_rows

SHIPPED = Path(__file__).parent
NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
EVAL_BATCH_ON_GPU = 64  # questions per evaluation pass in the GPU studies
# RunConfig fields a study sets itself, per run: not part of a budget or a method's settings.
PER_RUN = {"peft_type", "model_name", "dataset", "seed", "lr", "output_folder", "data_dir", "resume",
           "resume_from_checkpoint"}  # fmt: skip
PER_EVALUATION = {"ckpt", "model_name", "dataset", "eval_mode", "max_eval_samples", "output_dir", "data_dir"}


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
    """How each step is submitted under ``--executor slurm`` (flags of the same names override them)."""

    partition: str | None = None
    time_min: int = 24 * 60
    gpus_per_job: int = 1  # for steps that use a GPU; analysis steps ask for none
    cpus_per_job: int = 8
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
                **plan.train_settings, "lr": plan.lr}  # fmt: skip

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


def shipped_studies() -> list[str]:
    return sorted(path.stem for path in SHIPPED.glob("*.yaml"))


def load_study(name_or_path: str) -> StudyDesign:
    """A shipped study by name, or a study file by path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = SHIPPED / f"{name_or_path}.yaml"
        if not path.is_file():
            raise UserError(
                f"unknown study {name_or_path!r}: give a study file or one of {', '.join(shipped_studies())}"
            )
    if not path.is_file():
        raise UserError(f"study file {name_or_path} does not exist")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML{where} ({getattr(exc, 'problem', None) or exc})") from None
    return _Reader(path).design(content)


class _Reader:
    """Reads one study file; every error names the file and the key."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, problem: str) -> typing.NoReturn:
        raise UserError(f"{self.path}: {where}: {problem}")

    def mapping(self, value: Any, where: str, allowed: dict[str, Any], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            self.fail(where, f"expected a mapping of {', '.join(allowed)}, got {type(value).__name__}")
        unknown = [key for key in value if key not in allowed]
        if unknown:
            self.fail(f"{where}.{unknown[0]}" if where else unknown[0], f"unknown key; allowed: {', '.join(allowed)}")
        missing = [key for key in required if key not in value]
        if missing:
            self.fail(where or missing[0], f"{missing[0]} is required")
        return value

    def typed(self, value: Any, kind: Any, where: str) -> Any:
        """``value`` as ``kind`` (str, int, float, bool, or Optional of one); numbers written as text are numbers."""
        options = [k for k in typing.get_args(kind) if k is not type(None)] or [kind]
        if value is None and type(None) in typing.get_args(kind):
            return None
        base = options[0]
        if base is float and isinstance(value, str):  # YAML 1.1 reads 2e-4 (no dot) as text
            try:
                return float(value)
            except ValueError:
                pass
        if base is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, base) and not (base is int and isinstance(value, bool)):
            return value
        self.fail(where, f"expected {base.__name__}, got {value!r}")

    def fields(self, value: Any, where: str, config: type, excluded: set[str]) -> dict[str, Any]:
        """Settings of a RunConfig or EvalConfig, typed as its fields."""
        hints = typing.get_type_hints(config)
        allowed = {f.name: hints[f.name] for f in dataclasses.fields(config) if f.name not in excluded}
        settings = self.mapping({} if value is None else value, where, allowed)
        return {key: self.typed(item, allowed[key], f"{where}.{key}") for key, item in settings.items()}

    def method(self, value: Any, where: str) -> MethodPlan:
        entry = self.mapping(value, where, {"method": str, "name": str, "lr": float, "lr_source": str,
                                            "settings": dict}, ("method", "lr", "lr_source"))  # fmt: skip
        peft_type = self.typed(entry["method"], str, f"{where}.method").lower()
        if peft_type not in METHODS:
            self.fail(f"{where}.method", f"unknown method {peft_type!r}; allowed: {', '.join(METHODS)}")
        return MethodPlan(
            peft_type,
            self.typed(entry["lr"], float, f"{where}.lr"),
            self.typed(entry["lr_source"], str, f"{where}.lr_source"),
            self.fields(entry.get("settings"), f"{where}.settings", RunConfig, PER_RUN),
            self.name(entry.get("name", ""), f"{where}.name"),
        )

    def name(self, value: Any, where: str) -> str:
        """A name that becomes part of folder and log names: letters, digits, '.', '_', '-'."""
        name = self.typed(value, str, where).lower()
        if name and not NAME.fullmatch(name):
            self.fail(where, f"{name!r}: use letters, digits, '.', '_' and '-' (it names folders)")
        return name

    def listed(self, value: Any, where: str) -> list:
        if not isinstance(value, list):
            self.fail(where, f"expected a list, got {type(value).__name__}")
        return value

    def methods(self, value: Any, where: str) -> tuple[MethodPlan, ...]:
        return tuple(self.method(entry, f"{where}[{index}]") for index, entry in enumerate(self.listed(value, where)))

    def evaluation(self, value: Any, where: str) -> EvalPlan:
        entry = self.mapping(value, where, {"mode": str, "samples": int, "settings": dict}, ("mode",))
        mode = self.typed(entry["mode"], str, f"{where}.mode")
        if mode not in EVAL_MODES:
            self.fail(f"{where}.mode", f"unknown mode {mode!r}; allowed: {', '.join(EVAL_MODES)}")
        samples = self.typed(entry.get("samples"), int | None, f"{where}.samples")
        settings = self.fields(entry.get("settings"), f"{where}.settings", EvalConfig, PER_EVALUATION)
        return EvalPlan(mode, samples, settings)

    def texts(self, value: Any, where: str) -> tuple[str, ...]:
        return tuple(self.typed(item, str, f"{where}[{index}]") for index, item in enumerate(self.listed(value, where)))

    def published(self, value: Any) -> PublishedRows | None:
        if value is None:
            return None
        entry = self.mapping(value, "published", {"source": str, "model": str, "rows": dict},
                             ("source", "model", "rows"))  # fmt: skip
        if not isinstance(entry["rows"], dict):
            self.fail("published.rows", "expected a mapping of our method names to {method, rank}")
        rows = {}
        for ours, row in entry["rows"].items():
            where = f"published.rows.{ours}"
            row = self.mapping(row, where, {"method": str, "rank": int}, ("method",))
            rows[ours] = (self.typed(row["method"], str, f"{where}.method"),
                          self.typed(row.get("rank"), int | None, f"{where}.rank"))  # fmt: skip
        published = PublishedRows(self.typed(entry["source"], str, "published.source"),
                                  self.typed(entry["model"], str, "published.model"), rows)  # fmt: skip
        try:
            table = published_rows(published.source, published.model)
        except UserError as exc:
            self.fail("published.source", str(exc))
        for ours, (method, rank) in rows.items():
            if not any((row.method, row.rank) == (method, rank) for row in table):
                self.fail(f"published.rows.{ours}", f"{published.source} has no {published.model} {method} r{rank}")
        return published

    def slurm(self, value: Any) -> SlurmSettings:
        hints = typing.get_type_hints(SlurmSettings)
        entry = self.mapping(value or {}, "slurm", {f.name: hints[f.name] for f in dataclasses.fields(SlurmSettings)})
        settings = {}
        for key, item in entry.items():
            settings[key] = (self.texts(item, f"slurm.{key}") if key == "sbatch"
                             else self.typed(item, hints[key], f"slurm.{key}"))  # fmt: skip
        for key in ("time_min", "gpus_per_job", "cpus_per_job"):
            if key in settings and settings[key] < 1:
                self.fail(f"slurm.{key}", f"expected at least 1, got {settings[key]}")
        return SlurmSettings(**settings)

    def design(self, content: Any) -> StudyDesign:
        top = {"name": str, "summary": str, "model": str, "dataset": str, "benchmarks": str, "protocol": str,
               "budget": dict, "methods": list, "more_methods": list, "evaluations": list, "seeds": int,
               "zero_shot": bool, "needs_gpu": bool, "offline": bool, "cost": str, "differences": list,
               "notes": list, "published": dict, "slurm": dict}  # fmt: skip
        content = self.mapping(content, "", top, ("summary", "model", "methods", "evaluations"))
        scalar = {key: self.typed(content[key], top[key], key) for key in
                  ("name", "summary", "model", "dataset", "seeds", "zero_shot", "needs_gpu", "offline", "cost")
                  if key in content}  # fmt: skip
        budget = self.fields(content.get("budget"), "budget", RunConfig, PER_RUN)
        if "protocol" in content:
            budget = {"protocol": self.typed(content["protocol"], str, "protocol"), **budget}
        benchmarks = content.get("benchmarks", "all")
        if isinstance(benchmarks, list):
            benchmarks = ",".join(self.texts(benchmarks, "benchmarks"))
        try:
            resolve_names(self.typed(benchmarks, str, "benchmarks"))
        except UserError as exc:
            self.fail("benchmarks", str(exc).removeprefix("--dataset "))
        methods = self.methods(content["methods"], "methods")
        more = self.methods(content.get("more_methods", []), "more_methods")
        listed = self.listed(content["evaluations"], "evaluations")
        evaluations = tuple(self.evaluation(entry, f"evaluations[{index}]") for index, entry in enumerate(listed))
        if not methods or not evaluations:
            self.fail("methods" if not methods else "evaluations", "at least one entry is required")
        names = [plan.name for plan in (*methods, *more)]
        if len(set(names)) < len(names):
            duplicate = next(name for name in names if names.count(name) > 1)
            self.fail("methods", f"{duplicate} is listed twice; give variants of one method a name each")
        if scalar.get("seeds", 1) < 1:
            self.fail("seeds", f"expected at least 1, got {scalar['seeds']}")
        modes = [plan.mode for plan in evaluations]
        if len(set(modes)) < len(modes):
            self.fail("evaluations", f"{next(m for m in modes if modes.count(m) > 1)} is listed twice; one per mode")
        if "name" in scalar:
            scalar["name"] = self.name(scalar["name"], "name")
        design = StudyDesign(
            name=scalar.get("name", self.path.stem),
            summary=scalar["summary"],
            model_name=scalar["model"],
            dataset=scalar.get("dataset", "common_170k"),
            train_settings=budget,
            methods=methods,
            evaluations=evaluations,
            more_methods=more,
            benchmarks=benchmarks,
            **{key: scalar[key] for key in ("seeds", "zero_shot", "needs_gpu", "offline", "cost") if key in scalar},
            differences=self.texts(content.get("differences", []), "differences"),
            notes=self.texts(content.get("notes", []), "notes"),
            published=self.published(content.get("published")),
            slurm=self.slurm(content.get("slurm")),
            source=str(self.path),
        )
        if design.published is not None:
            strays = [ours for ours in design.published.rows if ours not in design.all_plans]
            if strays:
                self.fail(f"published.rows.{strays[0]}", f"not a method of this study ({', '.join(design.all_plans)})")
        self.check_runs(design)
        return design

    def check_runs(self, design: StudyDesign) -> None:
        """Every method's run configuration must be valid: the errors RunConfig gives, named by method entry."""
        for key, plans in (("methods", design.methods), ("more_methods", design.more_methods)):
            for index, plan in enumerate(plans):
                try:
                    RunConfig(**design.run_settings(plan))
                except UserError as exc:
                    self.fail(f"{key}[{index}] ({plan.name})", str(exc))
        for index, plan in enumerate(design.evaluations):
            try:
                EvalConfig(model_name=design.model_name, output_dir=".", dataset=design.benchmarks,
                           eval_mode=plan.mode, max_eval_samples=plan.samples, **plan.settings)  # fmt: skip
            except UserError as exc:
                self.fail(f"evaluations[{index}]", str(exc))
