"""The package layout's import rule, checked on the real tree and shown to catch a planted violation.

Layers (README, "Layout"): ``core`` imports nothing else of the package; ``storage`` only ``core``;
the stages ``ingest``, ``train``, ``score`` and ``synth`` only ``core`` and ``storage``; ``tune`` also
``train``; ``serve`` also ``score``, but only score modules that need no Spark; the jobs may import
anything and nothing imports the jobs. Within a package modules import each other freely, as long as
no import circle forms anywhere. Every import counts, function-local ones included: a lazy import
is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "ipinsights"

#: What each folder may import besides itself (the top-level ``ipinsights`` and ``_version`` are free).
ALLOWED = {
    "core": set(),
    "storage": {"core"},
    "ingest": {"core", "storage"},
    "train": {"core", "storage"},
    "score": {"core", "storage"},
    "synth": {"core", "storage"},
    "tune": {"core", "storage", "train"},
    "serve": {"core", "storage", "score"},
}
#: Modules that must import no Spark at all (they run inside training ranks, the endpoint, notebooks).
SPARK_FREE = (
    "core",
    "train.trainer",
    "train.task",
    "train.negatives",
    "train.validation",
    "train.data",
    "train.optim",
    "train.comm",
)


def module_imports(root: Path, package: str) -> dict[str, set[str]]:
    """``{module: {imported module, ...}}`` for every module under ``root/package`` (all import statements)."""
    pkg_dir = root / package
    modules = {
        ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__") for p in pkg_dir.rglob("*.py")
    }
    out: dict[str, set[str]] = {}
    for path in pkg_dir.rglob("*.py"):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
                # ``from pkg import module`` depends on that module
                deps.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)
        out[name] = deps
    return out


def _folder(module: str, package: str) -> str | None:
    parts = module.split(".")
    if parts[0] != package or len(parts) < 2 or parts[1] in ("_version",):
        return None
    return parts[1]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layout_violations(root: Path, package: str = PACKAGE, jobs: str = "ipinsights_jobs") -> list[str]:
    """Every import that breaks the layering, every circle, every Spark import where none may be."""
    imports = module_imports(root, package)
    internal = {m: {d for d in deps if d in imports and d != m} for m, deps in imports.items()}
    needs_spark = {m for m, deps in imports.items() if any(d.split(".")[0] == "pyspark" for d in deps)}
    problems = []
    for mod, deps in sorted(imports.items()):
        here = _folder(mod, package)
        for dep in sorted(deps):
            if dep.split(".")[0] == jobs:
                problems.append(f"{mod} imports {dep}: nothing imports the jobs")
            there = _folder(dep, package) if dep.split(".")[0] == package else None
            if here is None or there is None or there == here:
                continue
            if there not in ALLOWED.get(here, set()):
                problems.append(f"{mod} imports {dep}: {here}/ may import only {sorted(ALLOWED.get(here, ()))}")
            elif here == "serve" and there == "score" and dep in needs_spark:
                problems.append(f"{mod} imports {dep}, which needs Spark: serve uses only score's non-Spark parts")
        if any(mod == f"{package}.{s}" or mod.startswith(f"{package}.{s}.") for s in SPARK_FREE) and mod in needs_spark:
            problems.append(f"{mod} imports pyspark: it must run without Spark")
    problems += [f"import circle: {' -> '.join(c)}" for c in _cycles(internal)]
    return problems


def test_the_package_follows_the_import_rule():
    assert layout_violations(ROOT) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = tmp_path / "pkg" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    for d in (tmp_path / "pkg").rglob("*"):
        if d.is_dir() and not (d / "__init__.py").exists():
            (d / "__init__.py").write_text("")
    (tmp_path / "pkg" / "__init__.py").touch()
    return tmp_path


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        # an upward import, even a function-local one
        (
            {"core/ip.py": "def f():\n    from pkg.score import scorer\n", "score/scorer.py": ""},
            "core/ may import only",
        ),
        ({"storage/x.py": "import pkg.train.trainer\n", "train/trainer.py": ""}, "storage/ may import only"),
        ({"train/a.py": "from pkg.score.rules import X\n", "score/rules.py": "X = 1\n"}, "train/ may import only"),
        # a circle inside one folder
        ({"score/a.py": "from pkg.score import b\n", "score/b.py": "from pkg.score.a import x\n"}, "import circle"),
        # the endpoint reaching a Spark module of the score stage
        (
            {"serve/app.py": "from pkg.score.spark_job import run\n", "score/spark_job.py": "import pyspark\n"},
            "needs Spark",
        ),
        # Spark inside the trainer
        ({"train/trainer.py": "def f():\n    import pyspark.sql\n"}, "must run without Spark"),
        # the library importing a job
        ({"score/x.py": "from ipinsights_jobs import score\n"}, "nothing imports the jobs"),
    ],
)
def test_a_planted_violation_is_reported(tmp_path, files, expected):
    root = _tree(tmp_path, files)
    problems = layout_violations(root, "pkg")
    assert any(expected in p for p in problems), problems


def test_an_allowed_tree_passes(tmp_path):
    root = _tree(
        tmp_path,
        {
            "core/ip.py": "import numpy\n",
            "storage/files.py": "from pkg.core import ip\n",
            "score/scorer.py": "from pkg.storage.files import x\nfrom pkg.score import rules\n",
            "score/rules.py": "",
            "serve/app.py": "from pkg.score.scorer import Scorer\n",
            "tune/driver.py": "from pkg.train.trainer import Trainer\n",
            "train/trainer.py": "import torch\n",
        },
    )
    assert layout_violations(root, "pkg") == []


#: Size limits (issue 28): a module a newcomer can read, functions whose steps have names.
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
#: Where the size limits hold.
SIZED = {"score": (MAX_MODULE_LINES, MAX_FUNCTION_LINES), "train": (None, MAX_FUNCTION_LINES)}


def size_violations(root: Path, package: str = PACKAGE) -> list[str]:
    """Modules of ``SIZED`` folders over their line limit, functions (``def`` to last line, docstring
    included) over theirs."""
    problems = []
    for folder, (max_lines, max_fn) in SIZED.items():
        for path in sorted((root / package / folder).glob("*.py")):
            text = path.read_text(encoding="utf-8")
            name = f"{folder}/{path.name}"
            if max_lines is not None and len(text.splitlines()) > max_lines:
                problems.append(f"{name}: {len(text.splitlines())} lines (at most {max_lines})")
            for node in ast.walk(ast.parse(text, str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    assert node.end_lineno is not None
                    length = node.end_lineno - node.lineno + 1
                    if length > max_fn:
                        problems.append(f"{name}:{node.lineno} {node.name}: {length} lines (at most {max_fn})")
    return problems


def spark_naming_violations(root: Path, package: str = PACKAGE) -> list[str]:
    """In ``score/``, exactly the ``spark_``-named modules import pyspark (any import statement counts)."""
    imports = module_imports(root, package)
    problems = []
    for mod, deps in sorted(imports.items()):
        parts = mod.split(".")
        if len(parts) != 3 or parts[1] != "score" or parts[2] == "__init__":
            continue
        spark = any(d.split(".")[0] == "pyspark" for d in deps)
        named = parts[2].startswith("spark_")
        if spark and not named:
            problems.append(f"{mod} imports pyspark: name it spark_{parts[2]} (or move its Spark part to one)")
        elif named and not spark:
            problems.append(f"{mod} imports no pyspark: drop its spark_ prefix")
    return problems


def test_score_and_train_stay_readable():
    assert size_violations(ROOT) == []


def test_exactly_the_spark_modules_of_score_import_pyspark():
    assert spark_naming_violations(ROOT) == []


def test_the_size_and_naming_checks_catch_a_planted_violation(tmp_path):
    long_fn = "def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES
    root = _tree(
        tmp_path,
        {
            "score/big.py": "\n" * (MAX_MODULE_LINES + 1),
            "train/long.py": long_fn,
            "score/report.py": "def f():\n    from pyspark.sql import functions\n",
            "score/spark_plain.py": "import numpy\n",
            "score/spark_ok.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pyspark\n",
        },
    )
    sizes = size_violations(root, "pkg")
    assert any("score/big.py" in p for p in sizes) and any("train/long.py:1 f" in p for p in sizes), sizes
    naming = spark_naming_violations(root, "pkg")
    assert any("pkg.score.report imports pyspark" in p for p in naming), naming
    assert any("pkg.score.spark_plain imports no pyspark" in p for p in naming), naming
    assert not any("spark_ok" in p for p in naming), naming
