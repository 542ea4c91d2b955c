"""The package's shape: no import circle, no stage importing one that comes after it in the
data flow (docs/architecture.md), a thin loop, and benchmarks that use public names only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "spo"

# Data-flow order: a module may import modules of its own rank or lower.
RANKS = {
    "tasks": 0,  # problems and graders stand alone; config checks task options against them
    "config_io": 1, "config": 1,
    "presets": 2, "cache": 2, "seeds": 2, "distributed": 2,
    "tiny_models": 3, "models": 3,
    "sample": 4,
    "partition": 5,
    "estimate": 6,
    "optimize": 7,
    "evaluate": 8,
    "algorithms": 9,
    "train": 10,
    "commands": 11, "inspect": 11, "api": 11,  # bench draws its curves with spo.commands.plot
    "cli": 12,
}


def modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(("spo",) + path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """spo modules `name` imports anywhere in its file (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t != "spo" and t.startswith("spo."):
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def rank(module: str) -> int:
    if module == "spo":  # the package's public names (lazily loaded) come from spo.api and the stages below it
        return RANKS["api"]
    top = module.split(".")[1]
    assert top in RANKS, f"{module}: place it in RANKS (and in docs/architecture.md)"
    return RANKS[top]


def find_circle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(g[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (c := visit(w)):
                return c
        state[v] = 2
        stack.pop()
        return None

    for v in sorted(g):
        if v not in state and (c := visit(v)):
            return c
    return None


def test_no_import_circle():
    assert find_circle(graph()) is None, " -> ".join(find_circle(graph()) or [])


def test_circle_finder_finds_one():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


def test_no_stage_imports_a_later_one():
    upward = [f"{m} -> {t}" for m, targets in graph().items() for t in targets if rank(t) > rank(m)]
    assert not upward, upward


def test_cli_is_imported_by_nobody():
    assert not [m for m, targets in graph().items() if "spo.cli" in targets]


def test_the_loop_is_thin_and_names_no_algorithm_or_engine():
    text = (SRC / "train" / "loop.py").read_text()
    # 280: the loop also installs the preemption handlers, reports lost peers, checks a
    # resumed config and takes a Task object (issues 23, 24); a longer loop should split
    assert len(text.splitlines()) <= 280
    for word in ("spo_chain", "spo_tree", "grpo", "HFEngine", "estimator =="):
        assert not re.search(rf"\b{re.escape(word)}\b", text.split('"""', 2)[2]), word


def test_benchmarks_use_public_names_only():
    for path in (ROOT / "benchmarks").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("spo"):
                assert not [a.name for a in node.names if a.name.startswith("_")], (path.name, node.module)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id in {"trainer", "engine", "algorithm", "ctx"}:
                    assert not node.attr.startswith("_"), (path.name, f"{node.value.id}.{node.attr}")
