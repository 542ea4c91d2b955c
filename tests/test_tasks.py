"""Problem loading (files, hub ids, reasoning-gym), malformed data, tasks and prompt formats."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from spo.tasks import DataError, Problem, build_prompt_ids, build_prompt_text, build_task, task_options
from spo.tasks.prompts import PromptFormatError
from spo.tasks.problems import (
    hash_split,
    load_gsm8k,
    load_math,
    load_reasoning_gym,
    reasoning_gym_splits,
)

DATA_DIR = Path(os.environ.get("SPO_DATA_DIR", Path(__file__).parents[2] / "shared" / "data"))
needs_data = pytest.mark.skipif(not (DATA_DIR / "gsm8k" / "test.jsonl").is_file(), reason=f"no data at {DATA_DIR}")


def _write(tmp_path: Path, lines: list[str], name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"})

# --------------------------------------------------------------------------------------
# Malformed data
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("{not json", "invalid JSON"),
        (json.dumps({"question": "q"}), "missing key 'answer'"),
        (json.dumps({"question": 5, "answer": "#### 1"}), "'question' must be a string"),
        (json.dumps({"question": "q", "answer": "the answer is 3"}), "no '####'"),
        (json.dumps({"question": "q", "answer": "#### three"}), "not a number"),
        (json.dumps(["question", "answer"]), "expected a JSON object"),
    ],
)
def test_gsm8k_malformed_row_names_file_and_line(tmp_path: Path, bad_line: str, message: str) -> None:
    path = _write(tmp_path, [GOOD, "", bad_line, GOOD])  # blank line 2 is skipped, bad one is line 3
    with pytest.raises(DataError, match=message) as info:
        load_gsm8k(path)
    assert f"{path}:3" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_missing_file_names_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "train.jsonl"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_gsm8k(missing)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_math("missing.jsonl")  # relative .jsonl: a path, never a hub id


def test_gsm8k_file_parsing(tmp_path: Path) -> None:
    rows = [
        {"question": "Q1", "answer": "work #### 1,000"},
        {"question": "Q2", "answer": "#### 5 #### -7"},
    ]
    path = _write(tmp_path, [json.dumps(r) for r in rows], "train.jsonl")
    problems = load_gsm8k(path)
    assert [p.answer for p in problems] == ["1000", "-7"]
    assert [p.id for p in problems] == ["gsm8k/train/0", "gsm8k/train/1"]
    assert problems[0].solution == "work #### 1,000"


def test_math_file_parsing(tmp_path: Path) -> None:
    rows = [
        {"problem": "P1", "solution": "so $\\boxed{\\frac{1}{2}}$", "answer": "\\frac{1}{2}", "unique_id": "test/a/1.json", "level": 3},
        {"problem": "P2", "solution": "thus \\boxed{\\{1,2\\}}."},  # MATH train style: no answer key
    ]
    problems = load_math(_write(tmp_path, [json.dumps(r) for r in rows]))
    assert problems[0].id == "math/test/a/1.json" and problems[0].meta["level"] == 3
    assert problems[1].answer == "\\{1,2\\}"
    bad = _write(tmp_path, [json.dumps(rows[0]), json.dumps({"problem": "P", "solution": "no box"})], "bad.jsonl")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: no gold answer"):
        load_math(bad)
    wrong_type = _write(tmp_path, [json.dumps({"problem": "P", "answer": 5})], "wt.jsonl")
    with pytest.raises(DataError, match=r"wt\.jsonl:1: 'answer' must be a string"):
        load_math(wrong_type)


def test_hub_id_goes_through_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    """A string that is not a local path is a hub id: loaded by datasets.load_dataset (faked
    here, as no machine of ours reaches the hub) and validated like a file."""
    calls: list[tuple[Any, ...]] = []

    def fake_load_dataset(path: str, name: str | None = None, split: str | None = None) -> list[dict[str, str]]:
        calls.append((path, name, split))
        return [{"question": "Q", "answer": "#### 4"}, {"question": "Q2", "answer": "none"}]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fake_load_dataset))
    with pytest.raises(DataError, match=r"openai/gsm8k\[test\] row 2"):
        load_gsm8k("openai/gsm8k", split="test")
    assert calls == [("openai/gsm8k", "main", "test")]


# --------------------------------------------------------------------------------------
# Real data (../shared/data or $SPO_DATA_DIR)
# --------------------------------------------------------------------------------------


@needs_data
def test_real_gsm8k_and_math500() -> None:
    train = load_gsm8k(DATA_DIR / "gsm8k" / "train.jsonl")
    test = load_gsm8k(DATA_DIR / "gsm8k" / "test.jsonl")
    assert (len(train), len(test)) == (7473, 1319)
    assert train[0].answer == "72" and "####" in (train[0].solution or "")
    task = build_task("gsm8k", train_path=str(DATA_DIR / "gsm8k" / "train.jsonl"))
    # every reference solution earns reward 1 from its own grader
    assert all(task.reward(p, p.solution or "", truncated=False) == 1.0 for p in train[:500])

    math500 = load_math(DATA_DIR / "math500" / "test.jsonl", split="test")
    assert len(math500) == 500 and len({p.id for p in math500}) == 500
    task = build_task("math500", path=str(DATA_DIR / "math500" / "test.jsonl"))
    tr, ev = task.problems("train"), task.problems("eval")
    assert (len(tr), len(ev)) == (400, 100)
    assert not {p.id for p in tr} & {p.id for p in ev}
    assert {p.id for p in ev} == {p.id for p in hash_split(list(reversed(math500)), 100)[1]}  # order-free
    assert all(task.reward(p, f"so \\boxed{{{p.answer}}}", truncated=False) == 1.0 for p in ev)


@needs_data
def test_math500_with_separate_train_file(tmp_path: Path) -> None:
    math_path = DATA_DIR / "math500" / "test.jsonl"
    first = json.loads(math_path.read_text(encoding="utf-8").splitlines()[0])
    train_rows = [first, {"problem": "New problem", "solution": "\\boxed{3}"}]  # first one leaks from eval
    train_path = _write(tmp_path, [json.dumps(r) for r in train_rows], "train.jsonl")
    task = build_task("math500", path=str(math_path), train_path=str(train_path))
    assert len(task.problems("eval")) == 500
    assert [p.question for p in task.problems("train")] == ["New problem"]


# --------------------------------------------------------------------------------------
# reasoning-gym
# --------------------------------------------------------------------------------------


def test_reasoning_gym_is_seeded() -> None:
    a = load_reasoning_gym("chain_sum", seed=3, size=10)
    b = load_reasoning_gym("chain_sum", seed=3, size=10)
    c = load_reasoning_gym("chain_sum", seed=4, size=10)
    assert [p.question for p in a] == [p.question for p in b]
    assert [p.question for p in a] != [p.question for p in c]
    assert a[0].meta["entry"]["answer"] == a[0].answer


def test_reasoning_gym_splits_are_disjoint() -> None:
    # A tiny problem space (two 1-digit terms): most eval draws repeat train questions.
    options = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    train, evals = reasoning_gym_splits("chain_sum", train_size=60, eval_size=20, seed=0, options=options)
    train_q = {p.question for p in train}
    assert len(train) == 60 and 0 < len(evals) <= 20
    assert not train_q & {p.question for p in evals}
    assert len({p.question for p in evals}) == len(evals)
    again = reasoning_gym_splits("chain_sum", train_size=60, eval_size=20, seed=0, options=options)
    assert [p.id for p in again[1]] == [p.id for p in evals]
    with pytest.raises(ValueError, match="eval_seed"):
        reasoning_gym_splits("chain_sum", train_size=2, eval_size=2, seed=5, eval_seed=5)


def test_reasoning_gym_task_defaults() -> None:
    task = build_task("reasoning_gym", train_size=50, eval_size=20)
    train, evals = task.problems("train"), task.problems("eval")
    assert len(train) == 50 and len(evals) == 20
    assert not {p.question for p in train} & {p.question for p in evals}
    assert len(task.problems("train", limit=5)) == 5
    assert task.instruction is not None and "####" in task.instruction


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


def test_build_task_errors() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        build_task("mmlu")
    with pytest.raises(ValueError, match="train_pth"):
        build_task("gsm8k", train_pth="x.jsonl")
    with pytest.raises(ValueError, match="answer format"):
        build_task("gsm8k", answer_format="json")
    with pytest.raises(ValueError, match="split"):
        build_task("gsm8k").problems("test")  # type: ignore[arg-type]
    assert task_options("math500")["eval_size"] == 100
    assert task_options("gsm8k")["train_path"] is None
    assert build_task("gsm8k", instruction="").instruction is None


# --------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _tiny_tokenizer(chat_template: str | None) -> Any:
    """A word-level tokenizer built in memory (no network, no files)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "Problem Solution : What is 2 + 3 ? Be brief . Give the answer after #### system user assistant".split()
    specials = ["[UNK]", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(words)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", bos_token="<s>", eos_token="</s>")
    tok.add_special_tokens({"additional_special_tokens": specials[3:]})
    tok.chat_template = chat_template
    return tok


def test_chat_prompt_ids() -> None:
    tok = _tiny_tokenizer(CHAT_TEMPLATE)
    ids = build_prompt_ids(tok, "What is 2 + 3 ?", "chat", system_prompt="Be brief .", instruction="Give the answer after ####")
    assert isinstance(ids, list) and all(type(i) is int for i in ids)
    text = build_prompt_text(tok, "What is 2 + 3 ?", "chat", system_prompt="Be brief .", instruction="Give the answer after ####")
    assert text == (
        "<|system|> Be brief . </s> <|user|> What is 2 + 3 ?\n\nGive the answer after #### </s> <|assistant|>"
    )
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert ids[-1] == tok.convert_tokens_to_ids("<|assistant|>")
    assert tok.unk_token_id not in ids
    no_system = build_prompt_ids(tok, "What is 2 + 3 ?", "chat")
    assert no_system[0] == tok.convert_tokens_to_ids("<|user|>")


def test_plain_prompt_and_fallback() -> None:
    with_template = _tiny_tokenizer(CHAT_TEMPLATE)
    without = _tiny_tokenizer(None)
    plain = build_prompt_ids(with_template, "What is 2 + 3 ?", "plain")
    assert build_prompt_text(with_template, "What is 2 + 3 ?", "plain") == "Problem:\nWhat is 2 + 3 ?\n\nSolution:"
    assert with_template.decode(plain) == "Problem : What is 2 + 3 ? Solution :"
    with pytest.raises(PromptFormatError, match="task.prompt_format=plain"):
        build_prompt_ids(without, "What is 2 + 3 ?", "chat")  # no template: an error, not a silent switch
    with pytest.raises(ValueError, match="prompt style"):
        build_prompt_ids(with_template, "q", "markdown")  # type: ignore[arg-type]


def test_task_prompt_ids_carry_instruction() -> None:
    tok = _tiny_tokenizer(CHAT_TEMPLATE)
    task = build_task("gsm8k", instruction="Give the answer after ####")
    p = Problem(id="x", question="What is 2 + 3 ?", answer="5", solution=None, meta={})
    assert task.prompt_ids(tok, p, "plain") == build_prompt_ids(
        tok, "What is 2 + 3 ?", "plain", instruction="Give the answer after ####"
    )


# ---------------------------------------------------------------------------------------
# Where the presets' data comes from: the hub by default, $SPO_DATA_DIR when set

def test_presets_name_no_local_data_folder():
    from spo.presets import PRESETS_DIR

    for preset in PRESETS_DIR.glob("*.yaml"):
        assert "shared/data" not in preset.read_text(), preset.name


def test_gsm8k_and_math500_read_spo_data_dir_else_the_hub(tmp_path, monkeypatch):
    import datasets

    gsm = tmp_path / "gsm8k"
    gsm.mkdir()
    for name in ("train", "test"):
        (gsm / f"{name}.jsonl").write_text(json.dumps({"question": f"{name} q", "answer": "so #### 4"}) + "\n")
    monkeypatch.setenv("SPO_DATA_DIR", str(tmp_path))
    task = build_task("gsm8k")
    assert [p.question for p in task.problems("train") + task.problems("eval")] == ["train q", "test q"]
    with pytest.raises(DataError, match=r"SPO_DATA_DIR=.*no math500/test.jsonl there"):
        build_task("math500").problems("train")

    asked = []

    def fake_load_dataset(name, config=None, split=None):
        asked.append((name, config, split))
        return datasets.Dataset.from_list([{"question": "hub q", "answer": "#### 1"}])

    monkeypatch.delenv("SPO_DATA_DIR")
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert build_task("gsm8k").problems("train")[0].question == "hub q"
    assert asked == [("openai/gsm8k", "main", "train")]
