"""docs/architecture.md names only things that exist: every folder, module, function, class,
method and option it puts in backticks (outside code blocks) is found in src/spo."""

from __future__ import annotations

import ast
import importlib
import re
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "spo"
DOC = ROOT / "docs" / "architecture.md"


@lru_cache(maxsize=None)
def defined_names(path: Path) -> frozenset[str]:
    """Every name a module defines: functions, classes, methods, assigned and annotated names
    (dataclass fields and class attributes included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return frozenset(names)


@lru_cache(maxsize=None)
def all_defined_names() -> frozenset[str]:
    return frozenset().union(*(defined_names(p) for p in SRC.rglob("*.py")))


def class_members(name: str) -> set[str] | None:
    """Names defined in the body of the class `name` (None if no module defines it)."""
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name == name:
                return {getattr(n, "name", None) or getattr(getattr(n, "target", None), "id", None)
                        for n in node.body} - {None}
    return None


def option_keys() -> set[str]:
    from spo.config import RENAMED_OPTIONS, RunConfig
    from spo.config_io import describe_options

    keys = {key for key, *_ in describe_options(RunConfig)} | set(RENAMED_OPTIONS)
    return keys | {k.rsplit(".", 1)[0] for k in keys}


def inline_names(text: str) -> list[str]:
    """The backticked spans of `text` outside ``` blocks."""
    outside = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.findall(r"`([^`\n]+)`", outside)


def module_stems() -> set[str]:
    return {p.stem for p in SRC.rglob("*.py")} | {p.name for p in SRC.rglob("*") if p.is_dir()}


@lru_cache(maxsize=None)
def commands() -> str:
    """`spo --help`: the entry point named in pyproject.toml, asked for its help."""
    import contextlib
    import io

    entry = re.search(r'^spo = "([\w.]+):(\w+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    main = getattr(importlib.import_module(entry.group(1)), entry.group(2))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(["--help"])
    return out.getvalue()


def problem(span: str) -> str | None:
    """Why `span` names nothing that exists (None when it does, or is not a name)."""
    if span.startswith("spo "):  # a command
        word = span.split()[1]
        return None if re.search(rf"\b{re.escape(word)}\b", commands()) else f"no command {word}"
    if span.startswith("python "):  # a script
        script = span.split()[1]
        return None if (ROOT / script).is_file() else f"no script {script}"
    head = re.match(r"@?([\w./]+)", span)
    if head is None or re.fullmatch(r"[\d.]+", head.group(1)):
        return None  # a string, a shape, a number
    name = head.group(1).rstrip(".")
    stem = name.removesuffix(".py")
    if "/" not in name and "." not in stem and stem in module_stems():
        return None  # a module or folder named inside its row (`rewards.py` of `tasks/`)
    if "/" not in name and "." in stem and stem.split(".")[0] in module_stems() and stem.split(".")[0] not in (
            all_defined_names() - module_stems()):  # module.attribute
        module, _, attr = stem.partition(".")
        files = [p for p in SRC.rglob(f"{module}.py")]
        return None if any(attr in defined_names(p) for p in files) else f"no module {module} defines {attr}"
    if "/" in name or name.endswith(".py"):
        path, _, attr = name.partition(".py")
        if not attr and "." in Path(path).name:  # folder/module.attribute
            path, _, attr = path.rpartition(".")[0], None, path.rpartition(".")[2]
        attr = (attr or "").lstrip(".")
        for base in (SRC, ROOT):
            for candidate in (base / path, base / f"{path}.py"):
                if candidate.exists():
                    if attr and attr not in defined_names(candidate):
                        return f"{candidate.relative_to(ROOT)} defines no {attr}"
                    return None
        return f"no file or folder {path}"
    if name.startswith("spo."):
        parts = name.split(".")
        for cut in range(len(parts), 1, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            for attr in parts[cut:]:
                if not hasattr(obj, attr):
                    return f"{'.'.join(parts[:cut])} has no {'.'.join(parts[cut:])}"
                obj = getattr(obj, attr)
            return None
        return f"no module {name}"
    if "." in name:
        owner, _, member = name.partition(".")
        members = class_members(owner)
        if members is not None:
            return None if member.split(".")[0] in members else f"class {owner} has no {member}"
        if name in option_keys():
            return None
        if (SRC / owner).is_dir() or (SRC / f"{owner}.py").is_file():
            return problem(name.replace(".", "/", 1))
        if member in all_defined_names():  # a method of an object the text names (`engine.sync_weights()`)
            return None
        return f"{name}: neither a class member, an option, a module nor a method"
    if name in all_defined_names() or (SRC / name).exists() or name in option_keys():
        return None
    return f"nothing in src/spo defines {name}"


def test_every_name_in_the_architecture_doc_exists():
    wrong = {span: why for span in inline_names(DOC.read_text()) if (why := problem(span))}
    assert not wrong, wrong


def test_the_checker_finds_stale_names():
    assert problem("max_samples_per_prompt") is not None
    assert problem("estimate/registry._NO_SUCH") is not None
    assert problem("spo.sample.engine.NoSuchEngine") is not None
    assert problem("sample/no_such.py") is not None
    assert problem("RolloutEngine.no_such_method") is not None
    assert problem("spo no_such_command") is not None
    assert problem("scoring.no_such_function") is not None
    assert problem("engine.no_such_method()") is not None
    for fine in ("spo.sample.engine.RolloutEngine", "spo credit", "factory.build_engine", "rewards.py", "estimate/registry._BUILTIN_MODULES", "train/loop.py",
                 "max_samples_per_iteration", "release_memory()", "sampling.engine", "[B, T]", '"eos"'):
        assert problem(fine) is None, (fine, problem(fine))
