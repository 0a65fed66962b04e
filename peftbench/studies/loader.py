"""Study files: a YAML file says which model, data, methods, budget, seeds and evaluations a study runs.

    peftbench reproduce cpu-small                 # a study shipped with peftbench (peftbench/studies/*.yaml)
    peftbench reproduce path/to/my-study.yaml     # a researcher's own

A file is validated as it is read, into a ``peftbench.studies.design.StudyDesign``: an unknown key, a wrong type, an
unknown method, benchmark or evaluation mode is one ``error:`` line naming the file, the key and what is allowed.
``peftbench.studies.plan`` turns a design into commands.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from peftbench.config import EVAL_MODES, EvalConfig, RunConfig
from peftbench.data.registry import get_dataset, resolve_names
from peftbench.errors import UserError
from peftbench.hub import parse_pins
from peftbench.methods import METHODS
from peftbench.published import published_rows
from peftbench.studies.design import EvalPlan, MethodPlan, PublishedRows, SlurmSettings, StudyDesign

SHIPPED = Path(__file__).parent
NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
# RunConfig fields a study sets itself, per run: not part of a budget or a method's settings.
PER_RUN = {"peft_type", "model_name", "dataset", "seed", "lr", "output_folder", "data_dir", "resume",
           "resume_from_checkpoint", "hub_revisions"}  # fmt: skip
PER_EVALUATION = {
    "ckpt",
    "model_name",
    "dataset",
    "eval_mode",
    "max_eval_samples",
    "output_dir",
    "data_dir",
    "hub_revisions",
}
TOP_KEYS = {"name": str, "summary": str, "model": str, "dataset": str, "benchmarks": str, "protocol": str,
            "budget": dict, "methods": list, "more_methods": list, "evaluations": list, "seeds": int,
            "zero_shot": bool, "needs_gpu": bool, "offline": bool, "cost": str, "differences": list,
            "notes": list, "published": dict, "slurm": dict, "hub_revisions": dict}  # fmt: skip
SCALAR_KEYS = ("name", "summary", "model", "dataset", "seeds", "zero_shot", "needs_gpu", "offline", "cost")
DEFAULTED_KEYS = ("seeds", "zero_shot", "needs_gpu", "offline", "cost")  # StudyDesign's defaults stand when absent


def shipped_studies() -> list[str]:
    return sorted(path.stem for path in SHIPPED.glob("*.yaml"))


def load_study(name_or_path: str) -> StudyDesign:
    """A shipped study by name, or a study file by path."""
    path = _study_path(name_or_path)
    return _Reader(path).design(_content(path, ()))


def _study_path(name_or_path: str, relative_to: Path | None = None) -> Path:
    path = Path(name_or_path)
    if relative_to is not None and not path.is_absolute() and (relative_to.parent / path).is_file():
        return relative_to.parent / path
    if not path.suffix and not path.exists():
        path = SHIPPED / f"{name_or_path}.yaml"
        if not path.is_file():
            raise UserError(
                f"unknown study {name_or_path!r}: give a study file or one of {', '.join(shipped_studies())}"
            )
    if not path.is_file():
        raise UserError(f"study file {name_or_path} does not exist")
    return path


# Keys an extending study merges key by key into its base's; any other key it gives replaces the base's.
MERGED_KEYS = ("budget", "slurm")


def _mappings(*values: Any) -> bool:
    return all(isinstance(value, dict) for value in values)


def _content(path: Path, extending: tuple[Path, ...]) -> Any:
    """The file's YAML; with ``extends: <study>``, its keys over those of the study it names (a shipped name or a
    path beside it), so that a study that differs in its data, epochs or evaluations need not copy the rest."""
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML{where} ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(content, dict) or "extends" not in content:
        return content
    name = content.pop("extends")
    if not isinstance(name, str):
        raise UserError(f"{path}: extends: expected the name or path of a study, got {type(name).__name__}")
    try:
        base_path = _study_path(name, relative_to=path)
    except UserError as exc:
        raise UserError(f"{path}: extends: {exc}") from None
    if base_path.resolve() in (p.resolve() for p in (*extending, path)):
        raise UserError(f"{path}: extends: {name} extends this study again (a cycle)")
    base = _content(base_path, (*extending, path))
    if not isinstance(base, dict):
        raise UserError(f"{path}: extends: {base_path} is not a study (expected a mapping)")
    merged = {key: {**base[key], **value} if key in MERGED_KEYS and _mappings(base.get(key), value) else value
              for key, value in content.items()}  # fmt: skip
    return {**{key: value for key, value in base.items() if key != "name"}, **merged}  # its own name, or its file's


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
        if base is str and isinstance(value, int) and not isinstance(value, bool):  # batch: 64 (or auto)
            return str(value)
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

    def hub_revisions(self, value: Any) -> str | None:
        """``{org/name: revision}``: every run and evaluation of the study reads these repositories at these."""
        if value is None:
            return None
        if not isinstance(value, dict):
            self.fail("hub_revisions", f"expected a mapping of org/name: revision, got {type(value).__name__}")
        setting = ",".join(f"{repo}={self.typed(revision, str, f'hub_revisions.{repo}')}"
                           for repo, revision in value.items())  # fmt: skip
        try:
            parse_pins(setting)
        except UserError as exc:
            self.fail("hub_revisions", str(exc).removeprefix("--hub_revisions "))
        return setting or None

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
        for key in ("time_min", "gpus_per_job", "cpus_per_job", "mem_gb_per_job"):
            if settings.get(key) is not None and settings[key] < 1:
                self.fail(f"slurm.{key}", f"expected at least 1, got {settings[key]}")
        return SlurmSettings(**settings)

    def design(self, content: Any) -> StudyDesign:
        content = self.mapping(content, "", TOP_KEYS, ("summary", "model", "methods", "evaluations"))
        scalar = {key: self.typed(content[key], TOP_KEYS[key], key) for key in SCALAR_KEYS if key in content}
        budget = self.budget(content)
        benchmarks = self.benchmarks(content.get("benchmarks", "all"))
        methods = self.methods(content["methods"], "methods")
        more = self.methods(content.get("more_methods", []), "more_methods")
        evaluations = self.evaluations(content["evaluations"])
        self.check_entries(methods, more, evaluations, scalar.get("seeds", 1))
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
            **{key: scalar[key] for key in DEFAULTED_KEYS if key in scalar},
            differences=self.texts(content.get("differences", []), "differences"),
            notes=self.texts(content.get("notes", []), "notes"),
            published=self.published(content.get("published")),
            slurm=self.slurm(content.get("slurm")),
            hub_revisions=self.hub_revisions(content.get("hub_revisions")),
            source=str(self.path),
        )
        self.check_published_methods(design)
        self.check_runs(design)
        return design

    def budget(self, content: dict[str, Any]) -> dict[str, Any]:
        """The shared RunConfig fields; a top-level ``protocol`` is one of them."""
        budget = self.fields(content.get("budget"), "budget", RunConfig, PER_RUN)
        if "protocol" in content:
            budget = {"protocol": self.typed(content["protocol"], str, "protocol"), **budget}
        return budget

    def benchmarks(self, value: Any) -> str:
        """The benchmarks as --dataset takes them: a comma-separated text, from a list or a text."""
        if isinstance(value, list):
            value = ",".join(self.texts(value, "benchmarks"))
        try:
            resolve_names(self.typed(value, str, "benchmarks"))
        except UserError as exc:
            self.fail("benchmarks", str(exc).removeprefix("--dataset "))
        return value

    def evaluations(self, value: Any) -> tuple[EvalPlan, ...]:
        listed = self.listed(value, "evaluations")
        return tuple(self.evaluation(entry, f"evaluations[{index}]") for index, entry in enumerate(listed))

    def check_entries(
        self,
        methods: tuple[MethodPlan, ...],
        more: tuple[MethodPlan, ...],
        evaluations: tuple[EvalPlan, ...],
        seeds: int,
    ) -> None:
        """A study needs a method and an evaluation, distinct method names (they name folders) and one entry per
        evaluation mode."""
        if not methods or not evaluations:
            self.fail("methods" if not methods else "evaluations", "at least one entry is required")
        names = [plan.name for plan in (*methods, *more)]
        if len(set(names)) < len(names):
            duplicate = next(name for name in names if names.count(name) > 1)
            self.fail("methods", f"{duplicate} is listed twice; give variants of one method a name each")
        if seeds < 1:
            self.fail("seeds", f"expected at least 1, got {seeds}")
        modes = [plan.mode for plan in evaluations]
        if len(set(modes)) < len(modes):
            self.fail("evaluations", f"{next(m for m in modes if modes.count(m) > 1)} is listed twice; one per mode")

    def check_published_methods(self, design: StudyDesign) -> None:
        """Every published row must name a method of this study."""
        if design.published is None:
            return
        strays = [ours for ours in design.published.rows if ours not in design.all_plans]
        if strays:
            self.fail(f"published.rows.{strays[0]}", f"not a method of this study ({', '.join(design.all_plans)})")
        tasks = {get_dataset(name).task for name in resolve_names(design.benchmarks)}
        source_task = published_rows(design.published.source)[0].task
        if tasks != {source_task}:
            self.fail("published.source", f"{design.published.source} holds {source_task} results; the study "
                      f"evaluates {', '.join(sorted(tasks))} ({design.benchmarks})")  # fmt: skip

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
                           eval_mode=plan.mode, max_eval_samples=plan.samples,
                           **{"protocol": design.train_settings.get("protocol"), **plan.settings})  # fmt: skip
            except UserError as exc:
                self.fail(f"evaluations[{index}]", str(exc))
