"""Stop strings: where a response ends (`stop_cut`), the HF engine's decode loop, and the
grading of a stopped response (the stop text is not graded)."""

from __future__ import annotations

import pytest

from spo.algorithms.base import Context, Timer, sample_and_score
from spo.config import build_config
from spo.sample.engine import Rollout, SamplingParams, stop_cut
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
