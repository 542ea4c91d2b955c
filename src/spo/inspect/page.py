"""The self-contained HTML page: the template, style and script of `assets/` with the run's
JSON embedded, one `<script type="application/json">` element per iteration.

The browser parses an iteration's JSON only when it is selected (`JSON.parse` of that
element's text), so a page with many iterations opens as fast as one with a single
iteration; the served page (`spo inspect --serve`) has the same script and fetches the
same JSON from the server instead.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

from spo.inspect.run_data import (
    choose_iterations,
    episode_files,
    index_payload,
    load_iteration,
    load_token_text,
    read_config,
)

ASSETS = Path(__file__).with_name("assets")


def json_script(element_id: str, data: Any) -> str:
    """`data` as an inert JSON element; `<` is escaped so that no text in it (a token
    `</script>`) can end the element early."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).replace("<", "\\u003c")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def render_page(index: dict[str, Any], iterations: dict[int, dict[str, Any]]) -> str:
    """The page: template + inline CSS and JS + the index and the iterations' JSON."""
    data = [json_script("spo-index", index)]
    data += [json_script(f"spo-iter-{n}", payload) for n, payload in iterations.items()]
    parts = {"TITLE": html.escape(f"spo inspect: {index['run']}"),
             "STYLE": (ASSETS / "inspect.css").read_text(encoding="utf-8"),
             "DATA": "\n".join(data),
             "SCRIPT": (ASSETS / "inspect.js").read_text(encoding="utf-8")}
    # one pass over the template only: text inserted (a token "{{SCRIPT}}") is never rescanned
    return re.sub(r"\{\{(\w+)\}\}", lambda m: parts[m.group(1)], (ASSETS / "inspect.html").read_text(encoding="utf-8"))


def build_page(run_dir: Path, requested: list[str] | None = None) -> str:
    """The static page of a run: metrics, and the episodes of the chosen iterations
    (`choose_iterations`)."""
    config = read_config(run_dir)
    files = episode_files(run_dir)
    chosen = choose_iterations(list(files), requested)
    tokens = load_token_text(run_dir, config)
    iterations = {n: load_iteration(files, n, tokens, config) for n in chosen}
    index = index_payload(run_dir, config, list(files), chosen, mode="static", tokenizer=tokens.source)
    return render_page(index, iterations)


def write_page(run_dir: Path, out: Path, requested: list[str] | None = None) -> Path:
    """Write the static page to `out` (through a temporary file, so a page being viewed is
    never half written)."""
    text = build_page(run_dir, requested)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out
