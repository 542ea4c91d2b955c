"""Problems: one question with its gold answer, loaded from GSM8K, MATH(-500) or reasoning-gym.

Sources are local jsonl files or, when the given string is not a local path, Hugging Face
hub ids loaded with `datasets.load_dataset` (for users with network access). Every row is
validated; a bad one raises `DataError` naming the file and 1-based line, because a silently
skipped or mis-parsed row would quietly change what the policy is trained and graded on.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spo.tasks.rewards import extract_boxed, parse_number

GSM8K_HUB_ID = "openai/gsm8k"
MATH500_HUB_ID = "HuggingFaceH4/MATH-500"
DATA_DIR_ENV = "SPO_DATA_DIR"
"""Environment variable: a folder of local copies (gsm8k/train.jsonl, gsm8k/test.jsonl,
math500/test.jsonl) that the gsm8k and math500 tasks read instead of the hub when their
path options are null (what every shipped preset leaves them)."""
REASONING_GYM_EVAL_SEED_OFFSET = 10**9
"""Default eval seed = train seed + this. reasoning-gym seeds item i with Random(seed + i),
so eval_seed = seed + 1 would reproduce the training items shifted by one; an offset of
1e9 keeps the two ranges apart for any realistic size (overlaps are still removed)."""


class DataError(ValueError):
    """A malformed data row or file; the message names the file (or hub id) and 1-based line."""


@dataclass(frozen=True)
class Problem:
    """One task instance. Frozen because it is shared by sampler, grader and logger; use
    `id` (unique within a task) as a dict key, since `meta` makes it unhashable."""

    id: str
    question: str
    answer: str
    """Gold final answer as text (GSM8K: the number after "####"; MATH: the LaTeX answer)."""
    solution: str | None = None
    """Full reference solution (for SFT), None when the source has none."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Source-specific extras: MATH subject/level/unique_id, reasoning-gym `entry`, line numbers."""


# --------------------------------------------------------------------------------------
# Reading rows
# --------------------------------------------------------------------------------------


def default_source(relative: str, hub_id: str) -> str:
    """$SPO_DATA_DIR/`relative` when SPO_DATA_DIR is set (a DataError naming the file when it
    is not there: a local copy was asked for), else the hub id."""
    folder = os.environ.get(DATA_DIR_ENV)
    if not folder:
        return hub_id
    path = Path(folder).expanduser() / relative
    if not path.is_file():
        raise DataError(f"{DATA_DIR_ENV}={folder}: no {relative} there ({path}); unset {DATA_DIR_ENV} to load "
                        f"{hub_id} from the Hugging Face hub, or set the task's path option")
    return str(path)


def _looks_local(source: str | Path) -> bool:
    """A path (not a hub id): exists, or is absolute/relative-dotted, or names a json file."""
    s = str(source)
    p = Path(s).expanduser()
    return p.exists() or p.is_absolute() or s.startswith((".", "~")) or p.suffix in (".jsonl", ".json")


def read_jsonl(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (where, row) for every non-blank line; `where` is "file:line" for error messages.

    Raises FileNotFoundError naming the path, DataError for a line that is not UTF-8, bad
    JSON or a non-object row, and for a file without rows."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {p}" + (" (a folder)" if p.is_dir() else ""))
    rows = 0
    with p.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            where = f"{p}:{line_no}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                                "is this a jsonl file?") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON ({e.msg}, column {e.colno})") from None
            except RecursionError:
                raise DataError(f"{where}: JSON nested too deeply") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            rows += 1
            yield where, row
    if not rows:
        raise DataError(f"{p}: no data rows (the file is empty)")


def _hub_rows(hub_id: str, config: str | None, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of a hub dataset split, `where` = "hub_id[split] row N" (1-based)."""
    import datasets  # heavy, and only needed for hub ids

    try:
        ds = datasets.load_dataset(hub_id, config, split=split) if config else datasets.load_dataset(hub_id, split=split)
    except Exception as e:  # network/hub failures: say what we tried
        raise DataError(f"{hub_id!r} is not a local file and loading it from the Hugging Face hub failed: {e}") from e
    for i, row in enumerate(ds, start=1):
        yield f"{hub_id}[{split}] row {i}", dict(row)


def _rows(source: str | Path, hub_config: str | None, split: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if _looks_local(source):
        return read_jsonl(source)
    return _hub_rows(str(source), hub_config, split)


def _field(row: dict[str, Any], key: str, where: str, required: bool = True) -> str | None:
    """row[key] as a string; DataError when missing (if required) or not a string."""
    if key not in row or row[key] is None:
        if required:
            raise DataError(f"{where}: missing key {key!r} (keys: {sorted(row)})")
        return None
    value = row[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be a string, got {type(value).__name__}")
    return value


def _source_name(source: str | Path, split: str) -> str:
    return Path(str(source)).stem if _looks_local(source) else split


# --------------------------------------------------------------------------------------
# GSM8K
# --------------------------------------------------------------------------------------


def gsm8k_gold(answer_text: str, where: str = "<answer>") -> str:
    """The gold number of a GSM8K answer: the text after the LAST "####", commas removed."""
    if "####" not in answer_text:
        raise DataError(f"{where}: GSM8K answer has no '####' marker")
    gold = answer_text.rsplit("####", 1)[1].replace(",", "").strip()
    if parse_number(gold) is None:
        raise DataError(f"{where}: GSM8K answer after '####' is not a number: {gold!r}")
    return gold


def load_gsm8k(source: str | Path = GSM8K_HUB_ID, split: str = "train") -> list[Problem]:
    """GSM8K problems from a jsonl file ({"question", "answer"}) or a hub id (config "main").

    `split` picks the hub split ("train"/"test"); for files the id prefix is the file stem.
    `solution` keeps the full answer text (with its <<calculator>> notes) for SFT."""
    name = _source_name(source, split)
    problems = []
    for where, row in _rows(source, "main", split):
        question = _field(row, "question", where)
        answer_text = _field(row, "answer", where)
        assert question is not None and answer_text is not None
        problems.append(
            Problem(
                id=f"gsm8k/{name}/{len(problems)}",
                question=question,
                answer=gsm8k_gold(answer_text, where),
                solution=answer_text,
                meta={"where": where},
            )
        )
    return problems


# --------------------------------------------------------------------------------------
# MATH / MATH-500
# --------------------------------------------------------------------------------------


def load_math(source: str | Path = MATH500_HUB_ID, split: str = "test") -> list[Problem]:
    """MATH-format problems ({"problem", "solution"?, "answer"?, "subject"?, "level"?,
    "unique_id"?}) from a jsonl file or hub id. Gold = `answer`; rows without one (the
    original MATH train files) take the last \\boxed{} of `solution`."""
    name = _source_name(source, split)
    problems = []
    for where, row in _rows(source, None, split):
        question = _field(row, "problem", where)
        solution = _field(row, "solution", where, required=False)
        answer = _field(row, "answer", where, required=False)
        if answer is None and solution is not None:
            answer = extract_boxed(solution)
        if answer is None or not answer.strip():
            raise DataError(f"{where}: no gold answer (no 'answer' key and no \\boxed{{}} in 'solution')")
        uid = row.get("unique_id")
        meta = {k: row[k] for k in ("subject", "level", "unique_id") if k in row}
        meta["where"] = where
        assert question is not None
        problems.append(
            Problem(
                id=f"math/{uid}" if isinstance(uid, str) and uid else f"math/{name}/{len(problems)}",
                question=question,
                answer=answer.strip(),
                solution=solution,
                meta=meta,
            )
        )
    return problems


def hash_split(problems: list[Problem], eval_size: int) -> tuple[list[Problem], list[Problem]]:
    """Deterministic (train, eval) split: problems ordered by sha256 of their id, the first
    `eval_size` are eval. Independent of file order and of Python's hash seed."""
    if not 0 <= eval_size <= len(problems):
        raise ValueError(f"eval_size must be in [0, {len(problems)}], got {eval_size}")
    eval_ids = {p.id for p in sorted(problems, key=lambda p: hashlib.sha256(p.id.encode()).hexdigest())[:eval_size]}
    train = [p for p in problems if p.id not in eval_ids]
    evals = [p for p in problems if p.id in eval_ids]
    return train, evals


def withhold_last(problems: list[Problem], n: int, key: str) -> tuple[list[Problem], list[Problem]]:
    """(the rest, the last `n`): a validation set withheld from training. `key` names the
    option that set `n`, for the error when nothing would be left to train on."""
    if n >= len(problems):
        raise ValueError(f"{key}={n} leaves no training problems (the train split has {len(problems)})")
    return problems[:-n], problems[-n:]


def drop_overlap(problems: list[Problem], reference: list[Problem]) -> list[Problem]:
    """`problems` minus those whose question text also occurs in `reference`, and minus
    repeated questions (first kept): keeps eval sets honest."""
    seen = {_question_key(p.question) for p in reference}
    kept = []
    for p in problems:
        key = _question_key(p.question)
        if key not in seen:
            seen.add(key)
            kept.append(p)
    return kept


def _question_key(question: str) -> str:
    return " ".join(question.split())


# --------------------------------------------------------------------------------------
# reasoning-gym
# --------------------------------------------------------------------------------------


def load_reasoning_gym(
    name: str,
    *,
    seed: int,
    size: int,
    options: dict[str, Any] | None = None,
    split: str = "train",
) -> list[Problem]:
    """`size` procedural problems of reasoning-gym dataset `name` (seeded, reproducible).

    `options` go to the dataset's config (e.g. {"min_terms": 2, "max_terms": 3}). The whole
    entry is kept in meta["entry"] so that the dataset's own `score_answer` can grade it."""
    import reasoning_gym  # heavy, only needed for these tasks

    dataset = reasoning_gym.create_dataset(name, seed=seed, size=size, **(options or {}))
    problems = []
    for i in range(size):
        entry = dataset[i]
        problems.append(
            Problem(
                id=f"{name}/{split}/{seed}/{i}",
                question=str(entry["question"]),
                answer=str(entry["answer"]),
                solution=None,
                meta={"entry": entry, "dataset": name, "seed": seed, "index": i},
            )
        )
    return problems


def reasoning_gym_splits(
    name: str,
    *,
    train_size: int,
    eval_size: int,
    seed: int = 0,
    eval_seed: int | None = None,
    options: dict[str, Any] | None = None,
) -> tuple[list[Problem], list[Problem]]:
    """Disjoint, seeded (train, eval) sets of reasoning-gym problems.

    Train uses `seed`, eval `eval_seed` (default seed + 1e9). Eval questions that also occur
    in train (or twice in eval) are dropped; to still return `eval_size` problems we draw a
    few extra eval items (reasoning-gym items depend only on seed + index, so drawing more
    does not change the first ones). Eval may come out smaller when the task's problem space
    is tiny."""
    eval_seed = seed + REASONING_GYM_EVAL_SEED_OFFSET if eval_seed is None else eval_seed
    if eval_seed == seed:
        raise ValueError("reasoning-gym eval_seed must differ from the train seed")
    train = load_reasoning_gym(name, seed=seed, size=train_size, options=options, split="train")
    if eval_size == 0:
        return train, []
    candidates = load_reasoning_gym(name, seed=eval_seed, size=eval_size + eval_size // 2 + 16, options=options, split="eval")
    return train, drop_overlap(candidates, train)[:eval_size]


def drop_long_questions(problems: list[Problem], prompt_length: Any, max_tokens: int | None) -> list[Problem]:
    """The problems whose prompt is at most `max_tokens` tokens (all when None), measured
    by `prompt_length(problem)`: the reference drops longer MATH questions from training."""
    if max_tokens is None:
        return problems
    return [p for p in problems if prompt_length(p) <= max_tokens]
