"""The general dataset task (`task.name: dataset`): your rows, your prompt template, your
reward (docs/own-task.md).

Rows come from a local file (.jsonl, .json, .parquet, .csv; read with `datasets`, JSONL with
spo's own line-checked reader) or, when the source is not a local path, a Hugging Face hub
dataset (`datasets.load_dataset(path, hub_config, split=...)`). The prompt is a
`str.format` template over the row's fields; the whole row goes to the reward.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from spo.tasks.base import Split, Task
from spo.tasks.problems import DataError, Problem, _hub_rows, _looks_local, hash_split, read_jsonl
from spo.tasks.rewards import extract_answer
from spo.tasks.user_rewards import Isolation, OnError, build_reward

FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def read_rows(source: str, *, split: str = "train", hub_config: str | None = None
              ) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) for every row of a local file or hub dataset split; `where` is
    "file:line" for JSONL and CSV (the header is line 1), "file row N" for JSON and Parquet,
    "hub_id[split] row N" for the hub."""
    local = _looks_local(source) or Path(source).suffix in FILE_FORMATS
    if not local:
        yield from _hub_rows(source, hub_config, split)
        return
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix not in FILE_FORMATS:
        raise DataError(f"{path}: unknown data file type {suffix!r}; expected one of {', '.join(FILE_FORMATS)}")
    if suffix == ".jsonl":
        yield from read_jsonl(path)
        return
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}" + (" (a folder)" if path.is_dir() else ""))
    import datasets  # heavy, and only needed here

    try:
        ds = datasets.load_dataset(FILE_FORMATS[suffix], data_files=str(path), split="train")
    except Exception as err:
        raise DataError(f"{path}: cannot read it as {suffix[1:]}: {type(err).__name__}: {err}") from None
    if len(ds) == 0:
        raise DataError(f"{path}: no data rows (the file is empty)")
    for i, row in enumerate(ds):
        yield (f"{path}:{i + 2}" if suffix == ".csv" else f"{path} row {i + 1}"), dict(row)


def template_fields(template: str, key: str = "task.options.prompt") -> list[str]:
    """The field names a `str.format` template uses ("{question}" -> ["question"])."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise DataError(f"{key}: {template!r} is not a valid template ({err}); write literal braces as {{{{ }}}}"
                        ) from None
    bad = [n for n in names if not n or not n.isidentifier()]
    if bad:
        raise DataError(f"{key}: {template!r}: placeholders must name fields, like {{question}}")
    if not names:
        raise DataError(f"{key}: {template!r} names no field; write e.g. '{{question}}'")
    return names


def load_problems(source: str, *, prompt: str, answer_field: str | None, id_field: str | None,
                  solution_field: str | None, split: str, hub_config: str | None) -> list[Problem]:
    """Problems from every row of `source`; DataError naming file:line and the field when a
    row lacks a field the template, the answer, the id or the solution needs."""
    fields = template_fields(prompt)
    needed = [*fields, *(f for f in (answer_field, id_field, solution_field) if f)]
    stem = Path(source).stem if _looks_local(source) else f"{source}[{split}]"
    problems, ids = [], {}
    for where, row in read_rows(source, split=split, hub_config=hub_config):
        missing = [f for f in needed if row.get(f) is None]
        if missing:
            raise DataError(f"{where}: missing field {missing[0]!r} (the row has: {', '.join(sorted(row))})")
        pid = f"{stem}/{row[id_field]}" if id_field else f"{stem}/{len(problems)}"
        if pid in ids:
            raise DataError(f"{where}: id {row[id_field]!r} (task.options.id_field) repeats {ids[pid]}")
        ids[pid] = where
        problems.append(Problem(
            id=pid,
            question=prompt.format_map(row),
            answer="" if answer_field is None else str(row[answer_field]),
            solution=None if solution_field is None else str(row[solution_field]),
            meta={"where": where, "row": row},
        ))
    return problems


def split_problems(train: list[Problem], evals: list[Problem] | None, eval_size: float, on_overlap: str
                   ) -> tuple[list[Problem], list[Problem]]:
    """(train, eval): eval from its own source, with prompts that also occur in train an
    error (or dropped from eval, on_overlap "drop"); else a deterministic hash split of
    train (`eval_size`: a count >= 1 or a fraction < 1)."""
    if evals is None:
        n = round(eval_size * len(train)) if 0 < eval_size < 1 else int(eval_size)
        if eval_size != int(eval_size) and not 0 < eval_size < 1:
            raise DataError(f"task.options.eval_size: a count >= 0 or a fraction in (0, 1), got {eval_size}")
        if n >= len(train):
            raise DataError(f"task.options.eval_size={eval_size} leaves no training rows (there are {len(train)})")
        return hash_split(train, n)
    seen = {" ".join(p.question.split()): p.meta["where"] for p in train}
    kept = []
    for p in evals:
        first = seen.get(" ".join(p.question.split()))
        if first is None:
            kept.append(p)
        elif on_overlap == "error":
            raise DataError(f"{p.meta['where']}: this eval row's prompt is also a training row ({first}); "
                            "remove it, or set task.options.on_overlap: drop")
    if not kept:
        raise DataError("the eval split is empty" + (" after dropping rows also in train" if evals else ""))
    return train, kept


class DatasetTask(Task):
    """Your rows, your prompt, your reward (docs/own-task.md).

    path: the training rows: a .jsonl/.json/.parquet/.csv file, or a hub dataset id.
    eval_path: the eval rows (a file or hub id); None -> `eval_size` rows of `path`, chosen by
      a deterministic hash of their ids.
    eval_size: with no eval_path, a count (>= 1; 0 = no eval split) or a fraction in (0, 1).
    split / eval_split / hub_config: the hub dataset's splits and config (hub ids only; with no
      eval_path, eval_split is read from `path` when given, else the hash split is used).
    prompt: the question, a `str.format` template over the row's fields ("{question}",
      "Use {numbers} to make {target}."); answer-format instruction appended as for other tasks.
    answer_field: the row's gold answer (Problem.answer, shown in logs; built-in rewards read
      it); None when rows have none. id_field: a unique row id (default: the row's index).
    solution_field: a reference solution (for SFT), or None.
    reward: the reward spec (see spo.tasks.user_rewards): a built-in name (exact_match,
      numeric, math_verify, regex), "module:function", "file.py:function", a callable, a dict
      {function, weight, options} or a list of those (summed with their weights).
    reward_isolation: "process" (a worker with a time limit and memory cap) or "inprocess".
    reward_timeout_s / reward_memory_mb: the time limit per call and the worker's memory cap
      (0 = none). reward_on_error: "zero" (score 0, count, warn) or "raise" (stop the run).
    on_overlap: an eval row whose prompt is also a training row: "error" or "drop" it.
    answer_format / instruction: as for the other tasks (where extract() and the built-in
      rewards read the answer, and the instruction appended to each question)."""

    name = "dataset"

    def __init__(
        self,
        *,
        path: str | None = None,
        eval_path: str | None = None,
        eval_size: float = 0.1,
        split: str = "train",
        eval_split: str | None = None,
        hub_config: str | None = None,
        prompt: str = "{question}",
        answer_field: str | None = "answer",
        id_field: str | None = None,
        solution_field: str | None = None,
        reward: Any = "exact_match",
        reward_isolation: Isolation = "process",
        reward_timeout_s: float = 10.0,
        reward_memory_mb: int = 2048,
        reward_on_error: OnError = "zero",
        on_overlap: str = "error",
        answer_format: str = "last_hash",
        instruction: str | None = None,
    ) -> None:
        super().__init__(answer_format, instruction)
        if not path:
            raise DataError("task.options.path: the dataset task needs a data file or hub id")
        if on_overlap not in ("error", "drop"):
            raise DataError(f"task.options.on_overlap: expected 'error' or 'drop', got {on_overlap!r}")
        if eval_size < 0:
            raise DataError(f"task.options.eval_size: must be >= 0, got {eval_size}")
        template_fields(prompt)  # a bad template fails now, not at the first row
        self.path, self.eval_path, self.eval_size, self.on_overlap = path, eval_path, eval_size, on_overlap
        self.split, self.eval_split, self.hub_config = split, eval_split, hub_config
        self.fields = {"prompt": prompt, "answer_field": answer_field, "id_field": id_field,
                       "solution_field": solution_field, "hub_config": hub_config}
        self.reward_fn = build_reward(reward, answer_format=answer_format, isolation=reward_isolation,
                                      timeout_s=reward_timeout_s, memory_mb=reward_memory_mb,
                                      on_error=reward_on_error)

    @property
    def reward_errors(self) -> int:
        """How many reward calls failed so far (each scored 0 under reward_on_error: zero)."""
        return self.reward_fn.errors

    def _load(self, split: Split) -> list[Problem]:
        train = load_problems(self.path, split=self.split, **self.fields)  # type: ignore[arg-type]
        evals = None
        if self.eval_path or self.eval_split:
            evals = load_problems(self.eval_path or self.path, split=self.eval_split or "test",  # type: ignore[arg-type]
                                  **self.fields)
        self._cache["train"], self._cache["eval"] = split_problems(train, evals, self.eval_size, self.on_overlap)
        return self._cache[split]

    def extract(self, text: str) -> str | None:
        answer = extract_answer(text, self.answer_format)
        return None if answer is None else answer.strip()

    def score_answer(self, problem: Problem, answer: str | None) -> float:
        raise NotImplementedError("the dataset task scores whole responses (reward), not extracted answers")

    def reward(self, problem: Problem, text: str, truncated: bool) -> float:
        """The configured reward of the response; it sees truncated responses too
        (finish_reason "length")."""
        return self.reward_fn(problem.question, text, dict(problem.meta["row"]), "length" if truncated else "stop",
                              where=f"{problem.id} ({problem.meta['where']})")
