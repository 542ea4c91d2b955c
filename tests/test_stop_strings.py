"""Stop strings: where a response ends (`stop_cut`), the HF engine's decode loop, and the
grading of a stopped response (the stop text is not graded)."""

from __future__ import annotations

import pytest

from spo.algorithms.base import Context, Timer, sample_and_score
from spo.config import build_config
from spo.sample.engine import (Rollout, SamplingParams, StopReader, check_generate_args, first_stop_cut,
                              requested_tokens, response_budget, stop_cut)
from spo.sample.hf_engine import HFEngine
from spo.models import load_tokenizer
from spo.seeds import iteration_prompts
from spo.tasks.registry import build_task
from spo.train.progress import Progress


@pytest.mark.parametrize("texts, stops, keep", [
    (["12", "+7", "=19", "\n\n\nPro", "blem:"], ["\n\n\nProblem:"], 3),  # ends before the token where it begins
    (["ab", "c\n\n", "\nProblem:"], ["\n\n\nProblem:"], 1),               # begins inside token 2: token 2 dropped
    (["a", "b", "c"], ["x"], None),                                       # no stop string
    (["a", "b", "c"], [], None),
    (["a", "STOP", "b", "END"], ["END", "STOP"], 1),                       # the earliest of several
    (["STOP", "b"], ["STOP"], 1),                                         # never empty
])
def test_stop_cut(texts, stops, keep):
    assert stop_cut(texts, stops) == keep


@pytest.mark.parametrize("texts, stops, keep", [
    (["12", "+7", "=19", "\n\n\nPro", "blem:"], ["\n\n\nProblem:"], 3),
    (["a", "STOP", "b", "END"], ["END", "STOP"], 1),
    (["a", "b", "c"], ["x"], None),
    (["x", "A", "B", "C", "D"], ["ABCD", "BC"], 2),  # read token by token, "BC" completes first ...
    (["x", "A", "BCD"], ["ABCD", "BC"], 1),          # ... both in the same token: the earliest start
])
def test_first_stop_cut_reads_token_by_token(texts, stops, keep):
    """Where a decode loop stops: stop_cut of the text read up to the first token that
    completes a stop string (not of the whole text)."""
    assert first_stop_cut(texts, stops) == keep
    if texts[0] == "x" and texts[-1] == "D":
        assert stop_cut(texts, stops) == 1  # the whole text would cut at "ABCD"


class _PieceTokenizer:
    """Token id i decodes to pieces[i]."""

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)


@pytest.mark.parametrize("texts, stops", [
    (["12", "+7", "=19", "\n\n\nPro", "blem:", "x"], ["\n\n\nProblem:"]),
    (["x", "A", "B", "C", "D", "E"], ["ABCD", "BC"]),
    (["a", "b", "c", "d"], ["x"]),
    (["a", "b"] * 40 + ["END"], ["abaEND", "bEN"]),
    (["STOP", "b"], ["STOP", ""]),
    (["abc", "d", "xyzuvw", "q", "r"], ["cdxy"]),  # begins two tokens before a long new one
])
@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_stop_reader_stops_where_first_stop_cut_says(texts, stops, chunk):
    """Both engines' rule: reading tokens one by one (HF engine) or several per step (vLLM's
    deltas), the reader stops at the first step whose tokens complete a stop string, and
    keeps first_stop_cut of what it has read."""
    reader = StopReader(stops, _PieceTokenizer(texts))
    ids, cut, read = list(range(len(texts))), None, 0
    for start in range(0, len(ids), chunk):
        cut = reader.read(ids[start : start + chunk])
        read = start + chunk
        if cut is not None:
            break
    expected = first_stop_cut(texts[:read], stops)
    assert cut == expected
    if cut is not None:  # it stopped at the first chunk that completes one
        assert first_stop_cut(texts[: read - chunk], stops) is None
    else:
        assert first_stop_cut(texts, stops) is None


def test_generate_arguments_and_budgets_are_one_rule():
    params = SamplingParams(max_new_tokens=10)
    check_generate_args([[1], [2, 3]], params, 2, None, None)
    for contexts, n, caps, tokenizer, p, match in [
        ([[1]], 0, None, None, params, "n must be"),
        ([[]], 1, None, None, params, "empty context"),
        ([[1]], 1, [3, 4], None, params, "1 contexts but 2"),
        ([[1]], 1, None, None, SamplingParams(stop=("x",)), "tokenizer"),
    ]:
        with pytest.raises(ValueError, match=match):
            check_generate_args(contexts, p, n, caps, tokenizer)
    assert requested_tokens([[1], [2]], params, None) == [10, 10]
    assert requested_tokens([[1], [2]], params, [3, 4]) == [3, 4]
    assert response_budget(5, 10, None) == 10
    assert response_budget(5, 10, 8) == 3
    assert response_budget(9, 10, 8) == -1  # no room: an empty "length" rollout


@pytest.fixture(scope="module")
def engine(tiny_model, tokenizer):
    return HFEngine(tiny_model, tokenizer, stop_token_ids=[], batch_size=64)


def test_hf_engine_ends_responses_where_the_stop_string_begins(engine, tokenizer, chat_prompts):
    greedy = SamplingParams(max_new_tokens=24, temperature=0)
    free = [g[0] for g in engine.generate(chat_prompts, greedy)]
    # a stop string made of the 6th and 7th generated tokens' text of the first response
    texts = [tokenizer.decode([t]) for t in free[0].response_ids]
    stop = texts[5] + texts[6]
    assert stop.strip(), "the tiny model produced blank tokens"
    stopped = [g[0] for g in engine.generate(chat_prompts, SamplingParams(max_new_tokens=24, temperature=0,
                                                                           stop=(stop,)))]
    for a, b in zip(free, stopped):
        token_texts = [tokenizer.decode([t]) for t in a.response_ids]
        keep = stop_cut(token_texts, [stop])
        if keep is None:
            assert b.response_ids == a.response_ids and b.finish_reason == "length"
            continue
        assert b.finish_reason == "stop" and not b.truncated
        assert b.response_ids == a.response_ids[:keep]
        assert b.logprobs == pytest.approx(a.logprobs[:keep], abs=1e-6)
        assert stop not in "".join(token_texts[:keep])
    assert stopped[0].finish_reason == "stop" and len(stopped[0].response_ids) <= 5


def test_stop_strings_need_a_tokenizer(tiny_model):
    with pytest.raises(ValueError, match="tokenizer"):
        HFEngine(tiny_model, None, stop_token_ids=[]).generate([[1, 2]], SamplingParams(stop=("x",)))


class ScriptedEngine:
    """Answers every prompt with the same text, one token per character (the tiny-char
    tokenizer), cut by the stop strings as every engine must."""

    def __init__(self, tokenizer, text: str):
        self.ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        self.texts = [tokenizer.decode([t]) for t in self.ids]

    def generate(self, contexts, params, n=1, max_new_tokens=None):
        keep = stop_cut(self.texts, params.stop)
        ids = self.ids if keep is None else self.ids[:keep]
        reason = "eos" if keep is None else "stop"
        return [[Rollout(list(c), list(ids), [-0.1] * len(ids), reason) for _ in range(n)] for c in contexts]

    def sync_weights(self) -> None:
        pass


@pytest.mark.parametrize("stop, reward", [(["\n\n\nProblem:"], 1.0), ([], 0.0)])
def test_a_stopped_response_is_graded_without_the_stop_text(stop, reward):
    """A model that runs on into an invented next problem: without the stop string its
    last "####" (that problem's) is graded; with it, only the answer to the real one."""
    ctx, problems = _context(stop)
    responses = sample_and_score(ctx, 0, Progress(enabled=False), Timer())
    for r in responses:
        assert r.reward == reward
        assert ("Problem:" in r.text) == (not stop)
        if stop:
            assert r.finish_reason == "stop" and r.text.endswith(f"#### {problems[r.problem_index].answer}")


class OneProcess:
    rank, world = 0, 1


def _context(stop: list[str]):
    cfg = build_config({"task": {"name": "arith_steps", "prompt_format": "plain",
                                 "options": {"train_size": 4, "eval_size": 2}},
                        "sampling": {"prompts_per_iteration": 1, "group_size": 2, "stop": stop}})
    tokenizer = load_tokenizer("tiny-char-llama")
    task = build_task("arith_steps", train_size=4, eval_size=2)
    problems = task.problems("train")
    answer = problems[iteration_prompts(len(problems), 1, 0, cfg.seed)[0]].answer
    text = f"1+1=2\n#### {answer}\n\n\nProblem:\n3+4\n#### 999"
    return Context(cfg, ScriptedEngine(tokenizer, text), tokenizer, task, problems, None, OneProcess(),
                   tokenizer.pad_token_id), problems
