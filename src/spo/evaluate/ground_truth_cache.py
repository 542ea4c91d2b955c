"""`spo credit`'s ground truth on disk: which states it needs, their values
(`spo.evaluate.ground_truth.prefix_values`), and the cache that keeps them.

A state is (problem index, response prefix as token ids). Its V* is cached in
$SPO_CACHE_DIR/credit/<key>.json, the key naming everything a value depends on (the model's
weights, the tokenizer, the task, the sampling settings and K), so a re-run pays only for
the states it lacks, and a killed run keeps every chunk it finished (the file is rewritten
atomically after each).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from spo.cache import cache_dir, write_text_atomic
from spo.config import RunConfig
from spo.config_io import to_dict
from spo.evaluate.ground_truth import PrefixValue, prefix_values
from spo.sample.engine import RolloutEngine, SamplingParams
from spo.sample.tree import Tree

log = logging.getLogger("spo.credit")

State = tuple[int, tuple[int, ...]]  # (problem index, response prefix)

ResponseScore = Callable[[list[int], list[list[int]], list[bool]], list[float]]
"""score(problem_indices, response_ids, truncated) -> reward of each whole response."""


def unit_boundaries(length: int, stride: int) -> list[int]:
    """Every `stride`-th token boundary of a response of `length` tokens, and its end."""
    return sorted(set(range(0, length, stride)) | {length})


def states_needed(problems: Sequence[int], responses: Sequence[Sequence[int]], stride: int,
                  boundaries: Iterable[Sequence[Sequence[int]]] = (),
                  trees: Iterable[Sequence[Tree]] = ()) -> list[State]:
    """Every prefix whose V* some metric needs, in a fixed order: each response's unit
    boundaries and every setting's segment boundaries (`boundaries`: per setting, per
    response), then the inner nodes of every setting's trees (`trees`: per setting, one
    per problem). Ends of responses and leaves are rewards, not states."""
    boundaries = list(boundaries)
    seen: dict[State, None] = {}
    for i, ids in enumerate(responses):
        points = set(unit_boundaries(len(ids), stride))
        for per_response in boundaries:
            points |= set(per_response[i])
        for t in sorted(points):
            if t < len(ids):
                seen[(problems[i], tuple(ids[:t]))] = None
    for setting_trees in trees:
        for pi, tree in enumerate(setting_trees):
            for n in tree.nodes:
                if not n.leaf:
                    seen[(pi, tuple(tree.prefix(n.id)))] = None
    return list(seen)


def ground_truth_key(model: Any, cfg: RunConfig, k: int) -> str:
    """Cache key: the model's weights, the tokenizer, the task's prompts and grading, the
    sampling settings, and K."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to(torch.float32).cpu().numpy().tobytes())
    meta = {"weights": h.hexdigest(), "tokenizer": cfg.model.tokenizer or cfg.model.name_or_path,
            "task": to_dict(cfg.task), "sampling": {key: getattr(cfg.sampling, key) for key in
                                                    ("max_new_tokens", "temperature", "top_p", "top_k", "stop")},
            "k": k}
    return hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:20]


def ground_truth_file(model: Any, cfg: RunConfig, k: int) -> Path:
    """Where the cached values of this model, task, sampling and K live."""
    return cache_dir() / "credit" / f"{ground_truth_key(model, cfg, k)}.json"


@dataclass
class GroundTruth:
    values: dict[State, PrefixValue]
    states: int  # states needed
    computed: int  # of which sampled now (the rest from the cache)
    samples: int  # continuations sampled now
    tokens: int
    seconds: float
    cache_file: str | None

    def value(self, state: State) -> PrefixValue:
        return self.values[state]


def _state_key(prompts: Sequence[list[int]], state: State) -> str:
    p, prefix = state
    text = f"{len(prefix)}:" + ",".join(map(str, prompts[p] + list(prefix)))
    return hashlib.sha1(text.encode()).hexdigest()


def ground_truth(engine: RolloutEngine, prompts: Sequence[list[int]], score: ResponseScore, states: list[State], *,
                 num_samples: int, params: SamplingParams, budget: int, chunk_size: int,
                 cache_file: Path | None) -> GroundTruth:
    """V* of every state (`num_samples` continuations within `budget` response tokens each),
    read from `cache_file` where it has them and sampled otherwise, the file rewritten after
    every chunk; `cache_file` None: no cache."""
    t0 = time.perf_counter()
    cached: dict[str, list[float]] = {}
    if cache_file is not None and cache_file.is_file():
        try:
            cached = json.loads(cache_file.read_text())["states"]
        except (ValueError, KeyError, OSError):
            log.warning("%s: unreadable ground-truth cache, starting afresh", cache_file)
    values: dict[State, PrefixValue] = {}
    missing: list[State] = []
    for s in states:
        hit = cached.get(_state_key(prompts, s))
        if hit is not None:
            values[s] = PrefixValue(hit[0], hit[1], int(hit[2]))
        else:
            missing.append(s)
    done = {"tokens": 0, "states": 0}

    def on_chunk(idx: list[int], vals: list[PrefixValue], tokens: int) -> None:
        for i, v in zip(idx, vals):
            values[missing[i]] = v
            cached[_state_key(prompts, missing[i])] = [v.mean, v.se, v.samples]
        done["tokens"] += tokens
        done["states"] += len(idx)
        print(f"[credit] ground truth: {done['states']}/{len(missing)} states, {time.perf_counter() - t0:.0f} s",
              flush=True)
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(cache_file, json.dumps({"k": num_samples, "states": cached}))

    if missing:
        def continuation_score(owners: list[int], conts: list[list[int]], truncated: list[bool]) -> list[float]:
            return score([missing[i][0] for i in owners], [list(missing[i][1]) + c for i, c in zip(owners, conts)],
                         truncated)

        prefix_values(engine, [prompts[p] + list(prefix) for p, prefix in missing],
                      [budget - len(prefix) for _, prefix in missing], continuation_score, num_samples=num_samples,
                      params=params, chunk_size=chunk_size, on_chunk=on_chunk)
    return GroundTruth(values, len(states), len(missing), len(missing) * num_samples, done["tokens"],
                       time.perf_counter() - t0, None if cache_file is None else str(cache_file))
