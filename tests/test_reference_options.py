"""Options that reproduce the reference's data handling: prompts drawn with replacement,
a context budget shared by prompt and response, and dropping long questions."""

import pytest

from spo.config import ConfigError, SamplingConfig, build_config
from spo.sample.engine import SamplingParams
from spo.sample.factory import build_engine
from spo.seeds import iteration_prompts
from spo.tasks.problems import Problem, drop_long_questions


def test_prompts_with_replacement_are_fresh_shuffles():
    draws = [iteration_prompts(20, 8, it, seed=3, with_replacement=True) for it in range(6)]
    assert draws == [iteration_prompts(20, 8, it, seed=3, with_replacement=True) for it in range(6)]
    assert all(len(d) == 8 and len(set(d)) == 8 for d in draws)  # no repeat within an iteration
    assert len({i for d in draws[:3] for i in d}) < 20 and draws[0] != draws[1]
    seen, repeat = set(), False  # across iterations a problem may come back before a pass is over
    for d in draws:
        repeat |= bool(seen & set(d))
        seen |= set(d)
    assert repeat
    # without replacement: a pass over the data before any repeat
    passes = [i for it in range(5) for i in iteration_prompts(20, 4, it, seed=3)]
    assert sorted(passes) == list(range(20))


def test_context_budget_caps_prompt_plus_response(tiny_model, tokenizer, chat_prompts):
    long_prompt = max(chat_prompts, key=len)
    budget = len(long_prompt) + 10
    engine = build_engine(SamplingConfig(max_context=budget), tiny_model, tokenizer)
    short, long = engine.generate([[tokenizer.eos_token_id + 1], long_prompt],
                                  SamplingParams(max_new_tokens=30, temperature=1.0, seed=0))
    assert len(short[0].response_ids) <= 30
    r = long[0]
    assert len(long_prompt) + len(r.response_ids) <= budget
    if len(r.response_ids) == budget - len(long_prompt):
        assert r.finish_reason == "length"
    with pytest.raises(ConfigError, match="sampling.max_context"):
        build_config({}, ["sampling.max_context=1"])


def test_prompt_templates(tokenizer):
    from spo.tasks.prompts import PROMPT_TEMPLATES, build_prompt_ids, build_prompt_text

    text = build_prompt_text(tokenizer, "What is 2+2?", "plain", template="rho1b_sft")
    assert text == "[MATH_TASK] Problem:\nWhat is 2+2?\n\nSolution:"
    custom = build_prompt_text(tokenizer, "Q", "plain", template="Q: {question} {ANSWER} A:")
    assert custom == "Q: Q {ANSWER} A:"  # only {question} is filled
    ids = build_prompt_ids(tokenizer, "Q", "plain", template="rho1b_sft")
    assert ids == tokenizer("[MATH_TASK] Problem:\nQ\n\nSolution:", add_special_tokens=True)["input_ids"]
    assert "\\boxed{ANSWER}" in PROMPT_TEMPLATES["qwen_math"] and PROMPT_TEMPLATES["qwen_math"].startswith("<｜")
    with pytest.raises(ConfigError, match="task.prompt_template"):
        build_config({}, ["task.prompt_template=no placeholder"])
    # a template that opens with the BOS token as text gets no second BOS
    bos = tokenizer.bos_token
    ids = build_prompt_ids(tokenizer, "Q", "plain", template=bos + "Problem: {question}")
    assert ids.count(tokenizer.bos_token_id) == 1


def test_long_prompts_are_dropped_by_their_templated_length():
    problems = [Problem(id=str(i), question=q, answer="1") for i, q in enumerate(["1+1?", "word " * 300])]
    assert [p.id for p in drop_long_questions(problems, lambda p: len(p.question), 200)] == ["0"]
