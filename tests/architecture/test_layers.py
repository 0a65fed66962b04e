"""The layout stays true: every import in peftbench runs down the flow, and no module imports itself in a circle.

The flow, bottom to top (a package may import its own modules and those of the packages below it):

    errors, cache → hub → models → methods → data, published → config → runs → evaluate → train → analyze → report
    → studies → executors → bench, doctor, demo, reproduce → cli

Imports inside functions count the same as those at the top of a file: a lazy import must not hide a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import peftbench

PACKAGE = Path(peftbench.__file__).parent
LAYERS: list[set[str]] = [
    {"errors", "cache"},
    {"hub"},
    {"models"},
    {"methods"},
    {"data", "published"},
    {"config"},
    {"runs"},
    {"evaluate"},
    {"train"},
    {"analyze"},
    {"report"},
    {"studies"},
    {"executors"},
    {"bench", "doctor", "demo", "reproduce"},
    {"cli"},
]
LAYER_OF = {unit: index for index, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every peftbench import in a file, relative ones resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "peftbench" or target.startswith("peftbench."):
                names = [alias.name for alias in node.names]
                found.append((target, names))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("peftbench")]
    return found


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def unit(module: str) -> str:
    """The folder (or top-level module) a module belongs to: its place in the flow."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "peftbench"


def edges() -> dict[str, set[str]]:
    """module → the peftbench modules it imports (``from pkg import submodule`` names the submodule)."""
    modules = all_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for target, names in imported_modules(path):
            submodules = [f"{target}.{imported}" for imported in names if f"{target}.{imported}" in modules]
            graph[name].update(submodules or [target])
    return graph


def test_every_module_has_a_place_in_the_flow() -> None:
    homeless = {unit(name) for name in all_modules()} - set(LAYER_OF) - {"peftbench"}
    assert not homeless, f"add these to LAYERS: {sorted(homeless)}"


def test_imports_run_down_the_flow() -> None:
    against = []
    for module, targets in edges().items():
        for target in targets:
            if target == "peftbench" or unit(module) == unit(target) or unit(module) == "peftbench":
                continue
            if LAYER_OF[unit(target)] >= LAYER_OF[unit(module)]:
                against.append(f"{module} imports {target}")
    assert not against, "imports against the flow:\n" + "\n".join(sorted(against))


def test_no_private_name_crosses_a_module() -> None:
    crossing = [
        f"{module_name(path)} imports {target}.{imported}"
        for path in all_modules().values()
        for target, names in imported_modules(path)
        for imported in names
        if imported.startswith("_")
    ]
    assert not crossing, "\n".join(crossing)


def test_no_import_cycle() -> None:
    graph = edges()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target in graph and target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(" → ".join(cycle) for cycle in cycles)


# Imports every module with file reads watched: a read whose caller is a peftbench module happens at import time.
WATCH_READS = """
import builtins, importlib, pathlib, pkgutil, sys
import peftbench

root = str(pathlib.Path(peftbench.__file__).parent)
reads = []

def watched(read):
    def wrapper(*args, **kwargs):
        caller = sys._getframe(1).f_code.co_filename
        if caller.startswith(root):
            reads.append(f"{caller}: {read.__name__}({args[0]})")
        return read(*args, **kwargs)
    return wrapper

builtins.open = watched(builtins.open)
pathlib.Path.read_text = watched(pathlib.Path.read_text)
pathlib.Path.read_bytes = watched(pathlib.Path.read_bytes)
for module in pkgutil.walk_packages(peftbench.__path__, "peftbench."):
    if not module.name.endswith("__main__"):
        importlib.import_module(module.name)
print("\\n".join(reads))
"""


def test_no_module_reads_a_file_when_imported() -> None:
    """Reading at import time makes every command pay for it and fail on a missing file it does not use."""
    result = subprocess.run([sys.executable, "-c", WATCH_READS], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == ""
