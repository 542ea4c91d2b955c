"""The procedural multi-step arithmetic task `arith_steps` and the character-level tokenizer."""

from __future__ import annotations

import pytest

from spo.config import ConfigError, build_config
from spo.tasks import build_task, task_options
from spo.tasks.arith import ArithSpec, apply_op, first_wrong_step, render_question, render_solution


def small_task(**options):
    return build_task("arith_steps", **{"train_size": 300, "eval_size": 50, **options})


def test_same_seed_same_problems_other_seed_other_problems():
    a, b = small_task(seed=3), small_task(seed=3)
    assert [(p.question, p.solution, p.answer) for p in a.problems("train")] == \
        [(p.question, p.solution, p.answer) for p in b.problems("train")]
    assert [p.question for p in a.problems("eval")] == [p.question for p in b.problems("eval")]
    other = small_task(seed=4)
    assert [p.question for p in other.problems("train")] != [p.question for p in a.problems("train")]


def test_splits_are_disjoint_and_have_the_asked_sizes():
    task = small_task(max_operand=9, min_terms=2, max_terms=3)
    train, evals = task.problems("train"), task.problems("eval")
    assert len(train) == 300 and len(evals) == 50
    train_q = {p.question for p in train}
    assert len(train_q) == 300  # no repeats either
    assert not train_q & {p.question for p in evals}
    assert len({p.id for p in train + evals}) == 350


def test_eval_split_does_not_depend_on_asking_for_it_first():
    first = small_task().problems("eval")
    task = small_task()
    task.problems("train")
    assert [p.question for p in task.problems("eval")] == [p.question for p in first]


def test_gold_solution_is_correct_step_by_step_and_earns_reward_one():
    task = small_task(ops="+-*", min_terms=3, max_terms=4)
    for p in task.problems("train")[:100]:
        lines = p.solution.split("\n")
        assert lines[-1] == f"#### {p.answer}"
        steps = lines[:-1]
        assert len(steps) == len(p.meta["terms"]) - 1
        # ordinary precedence on the (parenthesised) question gives the left-to-right answer
        assert eval(p.question) == int(p.answer)  # noqa: S307 - our own digits and operators
        prev = str(p.meta["terms"][0])
        for line, op, term, result in zip(steps, p.meta["ops"], p.meta["terms"][1:], p.meta["results"]):
            assert line == f"{prev}{op}{term}={result}"
            prev = str(result)
        assert task.reward(p, "\n" + p.solution, truncated=False) == 1.0
        assert task.reward(p, "\n" + p.solution, truncated=True) == 0.0


def solution_with_slip(terms: list[int], ops: list[str], step: int) -> str:
    """The left-to-right solution with result `step` off by one, carried through the rest."""
    value, lines = terms[0], []
    for i, (op, term) in enumerate(zip(ops, terms[1:])):
        new = apply_op(value, op, term) + (1 if i == step else 0)
        lines.append(f"{value}{op}{term}={new}")
        value = new
    return "\n".join(lines + [f"#### {value}"])


@pytest.mark.parametrize("step", [0, 1])
def test_a_wrong_step_gives_reward_zero(step):
    task = small_task(min_terms=3, max_terms=3)  # + and - only: a slip always reaches the answer
    for p in task.problems("train")[:20]:
        bad = solution_with_slip(p.meta["terms"], p.meta["ops"], step)
        assert task.reward(p, "\n" + bad, truncated=False) == 0.0
        assert first_wrong_step(p, "\n" + bad) == step
        assert first_wrong_step(p, "\n" + p.solution) is None


def test_a_wrong_or_missing_final_line_gives_reward_zero():
    task = small_task()
    p = task.problems("train")[0]
    lines = p.solution.split("\n")
    assert task.reward(p, "\n".join(lines[:-1] + [f"#### {int(p.answer) + 1}"]), truncated=False) == 0.0
    assert task.reward(p, "\n".join(lines[:-1]), truncated=False) == 0.0  # no "####": no answer
    assert first_wrong_step(p, "\n".join(lines[:-1])) == len(lines) - 1


def test_no_negative_results_unless_allowed():
    task = small_task(ops="-", min_terms=4, max_terms=4, eval_size=0)
    assert all(r >= 0 for p in task.problems("train") for r in p.meta["results"])
    task = small_task(ops="-", min_terms=4, max_terms=4, eval_size=0, allow_negative=True)
    assert any(r < 0 for p in task.problems("train") for r in p.meta["results"])


def test_question_rendering():
    assert render_question([12, 7, 5, 9], ["+", "-", "+"]) == "12+7-5+9"
    assert render_question([12, 7, 3, 5], ["+", "*", "-"]) == "(12+7)*3-5"
    assert render_question([2, 3, 4], ["*", "*"]) == "2*3*4"
    assert render_solution([12, 7, 5, 9], ["+", "-", "+"])[0] == "12+7=19\n19-5=14\n14+9=23\n#### 23"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"min_terms": 1}, "min_terms must be >= 2"),
        ({"min_terms": 4, "max_terms": 3}, "max_terms (3) must be >= min_terms (4)"),
        ({"ops": "+/"}, "ops must be a non-empty string"),
        ({"ops": ""}, "ops must be a non-empty string"),
        ({"max_operand": -1}, "max_operand (-1) must be >= min_operand (0)"),
        ({"train_size": -1}, "train_size and eval_size must be >= 0"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_task("arith_steps", **options)


def test_too_small_problem_space_is_an_error():
    task = build_task("arith_steps", min_terms=2, max_terms=2, max_operand=2, ops="+", train_size=50, eval_size=5)
    with pytest.raises(ValueError, match="problem space is too small"):
        task.problems("train")


def test_config_accepts_the_task_and_rejects_unknown_options():
    cfg = build_config({}, ["task.name=arith_steps", "task.options={max_terms: 4, ops: '+-*'}"])
    assert cfg.task.options["ops"] == "+-*"
    assert {"min_terms", "max_terms", "max_operand", "ops", "seed", "train_size", "eval_size"} <= set(
        task_options("arith_steps"))
    with pytest.raises(ConfigError, match="task.options: unknown option 'num_terms' for task 'arith_steps'"):
        build_config({}, ["task.name=arith_steps", "task.options={num_terms: 3}"])


def test_spec_defaults_are_valid():
    ArithSpec().check()


# --------------------------------------------------------------------------------------
# The character-level tokenizer of tiny-char-llama


@pytest.fixture(scope="module")
def char_tokenizer():
    from spo.tiny_models import build_char_tokenizer

    return build_char_tokenizer()


def test_char_tokenizer_round_trips_task_text(char_tokenizer):
    from spo.tasks import build_prompt_text

    task = small_task(ops="+-*", max_terms=4)
    for p in task.problems("train")[:50] + task.problems("eval")[:10]:
        for text in (p.question, p.solution, "\n" + p.solution,
                     build_prompt_text(char_tokenizer, p.question, "plain")):
            ids = char_tokenizer(text, add_special_tokens=False)["input_ids"]
            assert len(ids) == len(text)  # one token per character
            assert char_tokenizer.decode(ids) == text
            assert char_tokenizer.unk_token_id not in ids


def test_char_tokenizer_specials(char_tokenizer):
    tok = char_tokenizer
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}) == 4
    ids = tok("1+2", add_special_tokens=True)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 4  # BOS, as Llama's plain prompts get
    assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=True) == "1+2"
    assert tok("é")["input_ids"][-1] == tok.unk_token_id
    assert not getattr(tok, "chat_template", None)  # so spo uses the plain prompt format
    assert len(tok) < 128


def test_tiny_char_llama_alias_builds_a_loadable_folder_once(tmp_path, monkeypatch):
    from spo.models import load_policy, load_tokenizer, resolve_model_path

    monkeypatch.setenv("SPO_CACHE_DIR", str(tmp_path))
    path = resolve_model_path("tiny-char-llama")
    assert path.startswith(str(tmp_path)) and (tmp_path / "models").is_dir()
    assert resolve_model_path("tiny-char-llama") == path
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]  # no temp folder left
    tok = load_tokenizer("tiny-char-llama")
    model = load_policy("tiny-char-llama", dtype="float32", seed=0)
    assert model.config.vocab_size == len(tok)
    assert model.config.eos_token_id == tok.eos_token_id
    assert tok.decode(tok("12+7=19\n#### 19")["input_ids"], skip_special_tokens=True) == "12+7=19\n#### 19"
