"""What `spo inspect` reads from a run folder, made into the compact JSON the page renders.

Two kinds of JSON go into a page:

* the **index** (`index_payload`): the run's name, config and metrics.jsonl lines (small,
  always embedded), and which iterations have an episode log;
* one **iteration** (`iteration_payload`) per episode log: its episodes, SPO-tree's trees
  and replayed edges, with the text of every token id it uses.

Sizes stay small without losing what the page shows: each distinct prompt (or SPO-tree
edge context) is stored once and episodes point to it; per-token advantages and loss masks,
constant over a response (outcome methods) or a segment (SPO-chain), are run-length
encoded as [[value, count], ...]; log-probs are rounded to 3 decimals (p to 0.1%), values
and advantages to 4 significant digits. Token text is decoded once per distinct id with the
run's tokenizer (`load_token_text`).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from spo.config import ConfigError
from spo.config_io import load_yaml
from spo.train.run_dir import CONFIG_FILE, require_run_folder
from spo.train.run_log import EPISODES_DIR, METRICS_FILE, read_metrics

log = logging.getLogger("spo.inspect")

ZERO_ADVANTAGE = 1e-9  # SPO-tree drops edges whose |A| is below this (spo.algorithms.spo_tree)
DEFAULT_MAX_ITERATIONS = 10

# Fields of an episode-log line that the page shows in its own way; any other scalar field
# is listed in the episode's header and any other list as long as the response is shown per
# token (PPO's `values` and `returns`), so a new algorithm's fields appear without changes here.
_CHAIN_FIELDS = {"boundaries", "values", "value_samples", "cutpoints"}  # SPO-chain's, when `boundaries` is there
_KNOWN_FIELDS = {"response_ids", "logprobs", "advantages", "loss_mask",
                 "kind", "problem_index", "group_id", "prompt_ids", "finish_reason", "reward", "response"}


# ---------------------------------------------------------------------------- run folder


def read_config(run_dir: Path) -> dict[str, Any]:
    """The run's resolved config.yaml; a folder without one is not a run folder."""
    return load_yaml(require_run_folder(run_dir, CONFIG_FILE) / CONFIG_FILE)


def episode_files(run_dir: Path) -> dict[int, Path]:
    """Iteration -> its episode log (episodes/iter_NNNNNN.jsonl), complete files only."""
    found = {}
    for path in (run_dir / EPISODES_DIR).glob("iter_*.jsonl"):
        try:
            found[int(path.stem.removeprefix("iter_"))] = path
        except ValueError:
            continue
    return dict(sorted(found.items()))


def choose_iterations(available: Sequence[int], requested: Sequence[str] | None,
                      limit: int = DEFAULT_MAX_ITERATIONS) -> list[int]:
    """Which iterations a static page embeds: `requested` (numbers, or `all`), else up to
    `limit` spread evenly from the first to the last, so a long run's page stays small and
    still shows how training went."""
    if requested:
        if "all" in requested:
            return list(available)
        try:
            wanted = sorted({int(x) for x in requested})
        except ValueError:
            raise ConfigError(f"--iteration takes iteration numbers or `all`, got {list(requested)}") from None
        missing = [i for i in wanted if i not in available]
        if missing:
            raise ConfigError(f"--iteration {missing}: no episode log for it (logged: {_ranges(available)})")
        return wanted
    if len(available) <= limit:
        return list(available)
    step = (len(available) - 1) / (limit - 1)
    return sorted({available[round(k * step)] for k in range(limit)})


def _ranges(values: Sequence[int]) -> str:
    return f"{values[0]}..{values[-1]}" if values else "none"


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of an episode log (a last line cut short is left out)."""
    data = path.read_bytes()
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line.strip()]


# ------------------------------------------------------------------------------ tokens


class TokenText:
    """The text of single token ids, each decoded once; without a tokenizer a token shows
    as its id in angle brackets, so the page still works (`load_token_text`)."""

    def __init__(self, tokenizer: Any = None, source: str = "none"):
        self.tokenizer = tokenizer
        self.source = source
        self._text: dict[int, str] = {}

    def text(self, token_id: int) -> str:
        if token_id not in self._text:
            if self.tokenizer is None:
                self._text[token_id] = f"⟨{token_id}⟩"
            else:
                self._text[token_id] = self.tokenizer.decode([token_id], skip_special_tokens=False,
                                                             clean_up_tokenization_spaces=False)
        return self._text[token_id]

    def table(self, ids: Iterable[int]) -> dict[str, str]:
        """{id: text} for the JSON of an iteration."""
        return {str(i): self.text(i) for i in sorted(set(ids))}


def tokenizer_sources(run_dir: Path, config: dict[str, Any]) -> list[str]:
    """Where the run's tokenizer can come from, best first: the latest checkpoint's model
    folder (what the run trained), then the config's `model.tokenizer` and
    `model.name_or_path` (an `sft:` name only when its model is already cached: inspecting
    must never start a training)."""
    from spo.train.checkpoint import latest_checkpoint

    sources = []
    ckpt = latest_checkpoint(run_dir)
    if ckpt is not None and (ckpt / "model").is_dir():
        sources.append(str(ckpt / "model"))
    model = config.get("model") or {}
    for name in (model.get("tokenizer"), model.get("name_or_path")):
        if name:
            sources.append(_cached_sft_folder(name) if str(name).startswith("sft:") else str(name))
    return [s for s in sources if s]


def _cached_sft_folder(name: str) -> str | None:
    from spo.train.sft_config import load_sft_config
    from spo.presets import resolve_preset
    from spo.train.sft import output_path

    try:
        path = output_path(load_sft_config(resolve_preset(name.removeprefix("sft:"))))
    except (ConfigError, FileNotFoundError):
        return None
    return str(path) if path.is_dir() else None


def load_token_text(run_dir: Path, config: dict[str, Any]) -> TokenText:
    """A TokenText with the first tokenizer of `tokenizer_sources` that loads; token ids
    only (with a warning) when none does."""
    from spo.models import load_tokenizer

    for source in tokenizer_sources(run_dir, config):
        try:
            return TokenText(load_tokenizer(source), source)
        except Exception as err:  # noqa: BLE001 - any failure means: try the next source
            log.warning("tokenizer %s: %s", source, err)
    log.warning("%s: no tokenizer could be loaded; tokens are shown as their ids", run_dir)
    return TokenText()


# ------------------------------------------------------------------------------- encoding


def sig(x: float | None, digits: int = 4) -> float | None:
    """`x` to `digits` significant digits (None and non-finite values as None)."""
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def rle(values: Sequence[float], digits: int = 4) -> list[list[float]]:
    """[[value, count], ...] of consecutive equal (rounded) values."""
    runs: list[list[float]] = []
    for v in values:
        v = sig(v, digits)
        if runs and runs[-1][0] == v:
            runs[-1][1] += 1
        else:
            runs.append([v, 1])
    return runs


class Prompts:
    """Distinct prompts (token-id lists) of one iteration; an episode stores the index."""

    def __init__(self) -> None:
        self.lists: list[list[int]] = []
        self._index: dict[tuple[int, ...], int] = {}

    def add(self, ids: Sequence[int]) -> int:
        key = tuple(ids)
        if key not in self._index:
            self._index[key] = len(self.lists)
            self.lists.append(list(ids))
        return self._index[key]


def token_fields(record: dict[str, Any]) -> dict[str, Any]:
    """A sampled sequence's tokens: ids, old log-probs, RLE advantages and loss mask."""
    ids = record.get("response_ids") or record.get("token_ids") or []
    out = {"ids": ids, "logprobs": [round(x, 3) for x in record.get("logprobs") or []]}
    if record.get("advantages") is not None:
        out["adv"] = rle(record["advantages"])
    if record.get("loss_mask") is not None:
        out["mask"] = rle(record["loss_mask"])
    return out


def episode(record: dict[str, Any], prompts: Prompts) -> dict[str, Any]:
    """One episode-log line (a response or an SPO-tree edge) in the page's form."""
    out = {
        "prompt": prompts.add(record.get("prompt_ids") or []),
        "problem": record.get("problem_index"),
        "group": record.get("group_id"),
        "reward": sig(record.get("reward")),
        "finish": record.get("finish_reason"),
        **token_fields(record),
    }
    known = _KNOWN_FIELDS
    if "boundaries" in record:  # SPO-chain, VinePPO
        out.update(boundaries=record["boundaries"], values=[sig(v) for v in record["values"]],
                   value_samples=record["value_samples"], cutpoints=record.get("cutpoints") or [])
        known = known | _CHAIN_FIELDS
    n = len(out["ids"])
    per_token, extra = {}, {}
    for key, value in record.items():
        if key in known:
            continue
        if isinstance(value, list) and len(value) == n and all(isinstance(v, (int, float)) for v in value):
            per_token[key] = [sig(v) for v in value]
        elif isinstance(value, (int, float, str, bool)) or value is None:
            extra[key] = sig(value) if isinstance(value, float) else value
    if per_token:
        out["per_token"] = per_token
    if extra:
        out["extra"] = extra
    return out


def edge_status(node: dict[str, Any], trained: set[int]) -> str:
    """How a tree node's edge parent -> node was used this iteration: `trained` (a fresh
    edge of the batch), `dropped` (|A| ~ 0: no signal), `parked` (a signal not trained now:
    put in the replay buffer for later iterations, or cut by `tree_episodes`), or `root`."""
    if node["parent"] is None:
        return "root"
    if node["id"] in trained:
        return "trained"
    if node.get("advantage") is None or abs(node["advantage"]) < ZERO_ADVANTAGE:
        return "dropped"
    return "parked"


def tree(record: dict[str, Any], prompts: Prompts, iteration: int,
         replays: dict[tuple[int, int, int], list[int]]) -> dict[str, Any]:
    """An SPO-tree record: its nodes with value, advantage, reward and edge status; the
    trained edges' per-token advantages and mask; where parked edges were replayed later."""
    edges = {e["node"]: e for e in record.get("edges") or []}
    nodes = []
    for n in record["nodes"]:
        node = {
            "id": n["id"], "parent": n["parent"], "depth": n["depth"], "leaf": n.get("leaf", False),
            "truncated": n.get("truncated", False), "finish": n.get("finish_reason"),
            "reward": sig(n.get("reward")), "value": sig(n.get("value")), "advantage": sig(n.get("advantage")),
            "status": edge_status(n, set(edges)),
            **token_fields(edges.get(n["id"], n)),
        }
        replayed = replays.get((iteration, record["group_id"], n["id"]))
        if replayed:
            node["replayed_in"] = replayed
        nodes.append(node)
    return {"prompt": prompts.add(record["prompt_ids"]), "problem": record.get("problem_index"),
            "group": record.get("group_id"), "nodes": nodes}


def find_replays(files: dict[int, Path]) -> dict[tuple[int, int, int], list[int]]:
    """(sampled iteration, group id, node) -> the iterations that replayed that edge, from
    the `replayed_edge` lines of the given episode logs (only those lines are parsed)."""
    out: dict[tuple[int, int, int], list[int]] = {}
    for it, path in files.items():
        with path.open("rb") as f:
            for line in f:
                if line.startswith(b'{"kind": "replayed_edge"'):
                    e = json.loads(line)
                    out.setdefault((e["sampled_iteration"], e["group_id"], e["node"]), []).append(it)
    return out


def load_iteration(files: dict[int, Path], n: int, tokens: TokenText, config: dict[str, Any]) -> dict[str, Any]:
    """Iteration `n`'s JSON from its episode log. For SPO-tree, the later logs that can hold
    a replay of its edges (up to `replay_max_age` - 1 iterations later) are searched too."""
    records = read_lines(files[n])
    replays = {}
    if any(r.get("kind") == "tree" for r in records):
        max_age = (config.get("algorithm") or {}).get("replay_max_age", 8)
        replays = find_replays({i: p for i, p in files.items() if n < i < n + max_age})
    return iteration_payload(n, records, tokens, replays)


def iteration_payload(iteration: int, records: list[dict[str, Any]], tokens: TokenText,
                      replays: dict[tuple[int, int, int], list[int]] | None = None) -> dict[str, Any]:
    """One iteration's JSON: episodes (or trees and replayed edges), prompts, token text."""
    prompts = Prompts()
    trees = [tree(r, prompts, iteration, replays or {}) for r in records if r.get("kind") == "tree"]
    replayed = [episode(r, prompts) for r in records if r.get("kind") == "replayed_edge"]
    episodes = [episode(r, prompts) for r in records if r.get("kind") not in ("tree", "replayed_edge")]
    ids = [i for p in prompts.lists for i in p]
    ids += [i for e in episodes + replayed for i in e["ids"]]
    ids += [i for t in trees for n in t["nodes"] for i in n["ids"]]
    return {"iteration": iteration, "prompts": prompts.lists, "episodes": episodes, "trees": trees,
            "replayed": replayed, "tokens": tokens.table(ids)}


# -------------------------------------------------------------------------------- index


def metric_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training lines, evaluation lines) of metrics.jsonl, numbers to 5 significant digits."""
    def clean(r: dict[str, Any]) -> dict[str, Any]:
        return {k: sig(v, 5) if isinstance(v, float) else v for k, v in r.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) or v is None}
    train = [clean(r) for r in rows if r.get("kind", "train") != "eval"]
    evals = [clean(r) for r in rows if r.get("kind") == "eval"]
    return train, evals


def index_payload(run_dir: Path, config: dict[str, Any], available: list[int], embedded: list[int],
                  *, mode: str, tokenizer: str) -> dict[str, Any]:
    """The page's index: run, config, metrics, iterations (all logged / in this page)."""
    rows = read_metrics(run_dir, kind=None) if (run_dir / METRICS_FILE).is_file() else []
    train, evals = metric_rows(rows)
    algo, model, task = config.get("algorithm") or {}, config.get("model") or {}, config.get("task") or {}
    return {
        "run": run_dir.resolve().name, "path": str(run_dir.resolve()), "mode": mode, "tokenizer": tokenizer,
        "estimator": algo.get("name", algo.get("estimator")),  # runs before algorithm.name: `estimator`
        "model": model.get("name_or_path"), "task": task.get("name"),
        "rho": algo.get("rho"), "prob_mask": algo.get("prob_mask"), "start_value": algo.get("start_value"),
        "config_yaml": yaml.safe_dump(config, sort_keys=False),
        "metrics": train, "evals": evals, "available": available, "embedded": embedded,
    }
