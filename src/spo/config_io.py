"""Reading and writing typed option dataclasses: YAML files, `a.b=value` overrides, and the
checks of every key and type against the dataclass (`from_dict`).

Generic: it knows no option of spo. The schema of a run lives in spo.config, SFT's in
spo.train.sft_config; both are built with the functions here.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A bad config value, key or file; the message names which."""

# ---------------------------------------------------------------------------------------
# Building a dataclass from nested dicts, checking every key and type.

def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " / ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` as type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} options, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-6" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported option type {tp}")  # a bug in this file


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """An instance of the dataclass `cls` from a nested dict; unknown keys and wrong types
    raise ConfigError naming the key (`prefix` + its name)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown option {prefix}{unknown[0]!s}; known options of {prefix.rstrip('.') or 'the run'}: "
            + ", ".join(sorted(names))
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(data[f.name], hints[f.name], prefix + f.name)
    obj = cls(**{k: v for k, v in kwargs.items() if not dataclasses.is_dataclass(hints[k])})
    for k, v in kwargs.items():
        if dataclasses.is_dataclass(hints[k]):
            setattr(obj, k, v)
    return obj


def set_path(data: dict, dotted: str, value: Any) -> dict:
    """Copy of `data` with `data[a][b][c] = value` for `a.b.c`; the leaf is replaced, not merged
    (so `model.config_overrides={}` clears it, while `task.options.seed=3` changes one key)."""
    head, _, rest = dotted.partition(".")
    out = dict(data)
    if rest:
        inner = out.get(head)
        if inner is not None and not isinstance(inner, dict):
            raise ConfigError(f"{head}: holds {inner!r}, not a section, so `{head}.{rest}` cannot be set in it")
        try:
            out[head] = set_path(inner or {}, rest, value)
        except ConfigError as err:  # name the full key, not only its tail
            raise ConfigError(f"{head}.{err}") from None
    else:
        out[head] = value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b.c=value` -> ("a.b.c", value), the value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        reason = " ".join(str(getattr(err, "problem", None) or err).split())
        raise ConfigError(f"{key}: override value {raw!r} is not valid YAML ({reason})") from None
    except RecursionError:
        raise ConfigError(f"{key}: override value nested too deeply") from None
    return key, value


def load_yaml(path: str | Path) -> dict:
    """A YAML file of options (a mapping); ConfigError naming the file (and line) when it is
    missing, not UTF-8 text, not YAML, or not a mapping at the top."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (" (a folder)" if path.is_dir() else ""))
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); is it a YAML file?") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        reason = " ".join(str(getattr(err, "problem", None) or err).split())
        raise ConfigError(f"{where}: not valid YAML: {reason}") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        held = "a list" if isinstance(data, list) else f"the single value {data!r}"
        raise ConfigError(f"{path}: the top level must be a mapping of options (`key: value` lines); "
                          f"this file holds {held}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{path}: option names must be strings, got {bad[0]!r}")
    return data


def load_sections(path: str | Path, overrides: list[str], section: str, cls: type) -> tuple[Any, dict]:
    """A two-section preset (`spo bench`, `spo credit`): (`section` read into the dataclass
    `cls`, the `run` mapping, validated later by build_config) after the overrides
    (`<section>.x=...` or `run.section.key=...`)."""
    data = apply_overrides(load_yaml(path), list(overrides))
    unknown = set(data) - {section, "run"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(unknown)}; a {section} preset has `{section}` "
                          "and `run`")
    return from_dict(cls, data.get(section) or {}, prefix=f"{section}."), data.get("run") or {}


def apply_overrides(data: dict | None, overrides: list[str] = ()) -> dict:
    """Copy of the nested dict `data` with each `a.b=value` override set in it."""
    merged = dict(data or {})
    for text in overrides:
        merged = set_path(merged, *parse_override(text))
    return merged



def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples as lists) for YAML/JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def describe_options(cls: type, prefix: str = "", default: Any = None) -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every option of the dataclass `cls`, read from the
    field docstrings of its source.

    `default`: the instance whose values are shown (default `cls()`; SFTConfig's sections
    have other defaults than their classes). Used by `spo options` and docs/config.md."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:] + [None]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    hints = typing.get_type_hints(cls)
    rows = []
    default_obj = default if default is not None else cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe_options(tp, prefix + f.name + ".", getattr(default_obj, f.name))
            continue
        rows.append((prefix + f.name, _type_name(tp), repr(getattr(default_obj, f.name)), docs.get(f.name, "")))
    return rows


# ---------------------------------------------------------------------------------------
# Supervised fine-tuning (`spo sft`): its own options, read the same way as a run's
# (defaults <- YAML preset <- `a.b=value` overrides), with the model/task/optim sections

def fill_defaults(default: Any, data: dict) -> dict:
    """`data` with every option it leaves out taken from the dataclass instance `default`,
    section by section: `from_dict` alone would build a section that is given at all
    (`optim: {lr: 3e-3}`) from its class defaults, dropping SFTConfig's own ones."""
    out = dict(data)
    for f in dataclasses.fields(default):
        value = getattr(default, f.name)
        if f.name not in out:
            out[f.name] = to_dict(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
        elif dataclasses.is_dataclass(value) and isinstance(out[f.name], dict):
            out[f.name] = fill_defaults(value, out[f.name])
    return out
