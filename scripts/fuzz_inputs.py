"""Fuzz what users and models hand to spo: config overrides, data rows, answers to grade
(docs/reliability.md; tests/test_fuzz.py runs the same checks with fewer examples).

    python scripts/fuzz_inputs.py                 # 2000 override lists, 2000 data files (x2 tasks), 1000 answers
    python scripts/fuzz_inputs.py --examples 300

Every case must be either accepted, or rejected cleanly: for overrides and data files,
`spo train` exits with code 2 and a one-line message that names an override's key (or a
section of it) or the data file with its line; for answers, the task's reward is 0 or 1,
returned within the grader's time limit, whatever the text. Anything else (another exit
code, an exception escaping `main`, a message naming neither) is a failure. `spo train`
runs with the training itself replaced by what happens before the first model is loaded
(the task built, its train and eval problems loaded), so each case takes milliseconds.
Prints cases tried, accepted, rejected cleanly, failures.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spo.train.loop  # noqa: F401 (patched below through sys.modules)
from spo.cli import main as spo_main
from spo.config import RunConfig, load_config
from spo.config_io import describe_options, to_dict
from spo.presets import resolve_preset
from spo.tasks.problems import Problem
from spo.tasks.registry import build_task, task_options

EXCLUDED = ("model.", "task.name", "output_dir", "critic.")
"""Options the stand-in for training does not exercise (models are not loaded; task.name
would fetch GSM8K/MATH from the hub) or that would write elsewhere."""
KEYS = [key for key, *_ in describe_options(RunConfig) if not key.startswith(EXCLUDED)]
KEYS += [f"task.options.{k}" for k in task_options("reasoning_gym")]
KEYS += ["task.options.dataset_options.min_terms", "task.options.dataset_options.max_digits"]
GRADE_SECONDS = 1.0
"""The MATH grader's time limit in the answer fuzz."""
SLACK_SECONDS = 10.0
"""What a case may take beyond it: the worker's grace before it is killed (2 s) and the
start of a new worker (imports SymPy: 2-3 s, more on a busy machine)."""


# ---------------------------------------------------------------------------------------
# Strategies.

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 100), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.sampled_from(["chain_sum", "products", "nope", "1e-6", "plain", "chat"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)
garbage = st.sampled_from(["[1", "{a: ", ": :", "&a *a", "!!python/object:os.system", "- - -", "'", "\t", "\x00",
                           "{", "]]", "%YAML 1.1", "? x", "[" * 50, "\udcff"])


def _render(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


plausible = st.sampled_from(["1", "2", "4", "8", "16", "0", "0.5", "1e-4", "true", "false", "null", "grpo", "rloo",
                             "spo_tree", "chat", "plain", "chain_sum", "[2, 2]", "{min_terms: 2}", "cosine"])
override_values = st.one_of(plausible, plausible, plausible, values.map(_render), garbage, st.text(max_size=20))
known_keys = st.sampled_from(KEYS)
override_keys = st.one_of(known_keys, known_keys, known_keys, known_keys.map(lambda k: k + ".x"),
                          st.from_regex(r"[a-z_.]{1,20}", fullmatch=True))


def _flat(data: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


VALID = [f"{key}={_render(value)}" for key, value in _flat(to_dict(load_config(resolve_preset("smoke"))))
         if not key.startswith(EXCLUDED)]
"""Every option of the smoke preset set to its own value: valid overrides, mixed in so that
the cases that are accepted (and build the task) are not rare."""
overrides = st.lists(st.one_of(st.sampled_from(VALID),
                               st.tuples(override_keys, override_values).map(lambda kv: f"{kv[0]}={kv[1]}")),
                     min_size=1, max_size=3)

json_rows = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30)),
                         lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                 st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                         max_leaves=8)
gsm8k_like = st.fixed_dictionaries({"question": st.one_of(st.text(max_size=40), st.integers()),
                                    "answer": st.one_of(st.text(max_size=20),
                                                        st.integers(-10**30, 10**30).map(lambda n: f"work #### {n}"),
                                                        st.text(max_size=20).map(lambda t: f"#### {t}"))})
math_like = st.fixed_dictionaries({"problem": st.text(max_size=40)},
                                  optional={"solution": st.text(max_size=40).map(lambda t: f"\\boxed{{{t}}}"),
                                            "answer": st.one_of(st.text(max_size=10), st.integers())})
good_gsm8k = st.fixed_dictionaries({"question": st.text(max_size=40),
                                    "answer": st.integers(-10**6, 10**6).map(lambda n: f"so #### {n}")})
good_math = st.fixed_dictionaries({"problem": st.text(max_size=40), "answer": st.text(min_size=1, max_size=10)})
bad_lines = st.one_of(json_rows.map(lambda r: json.dumps(r).encode()), gsm8k_like.map(lambda r: json.dumps(r).encode()),
                      math_like.map(lambda r: json.dumps(r).encode()), st.binary(max_size=40),
                      st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")))
good_lines = st.one_of(good_gsm8k, good_math).map(lambda r: json.dumps(r).encode())
data_files = st.lists(st.one_of(good_lines, good_lines, good_lines, bad_lines, st.just(b"")),
                      max_size=6).map(lambda ls: b"\n".join(ls))

latex_tokens = st.sampled_from(["0", "1", "2", "9", "42", "-", "+", "^", "{", "}", "\\frac", "\\sqrt", "\\boxed",
                                "\\pi", "x", ".", ",", "(", ")", "[", "]", "\\infty", "!", "/", "=", "\\cdot", "e",
                                "\\left(", "\\right)", "####", " ", "\\", "$", "%", "1e999", "\\text{ cm}", "\\%"])
answers = st.one_of(st.lists(latex_tokens, max_size=30).map("".join), st.text(max_size=60),
                    st.sampled_from(["9^{9^{9^{9}}}", "2^{2^{40}}", "\\boxed{" + "1" * 10**6 + "}",
                                     "(10^{100000})!", "\\frac{" * 200 + "1" + "}" * 200, "0." + "9" * 5000]))


# ---------------------------------------------------------------------------------------
# Running `spo train` up to the first model load.

def _stand_in_for_training(cfg, resume_dir=None, task=None, allow_config_change=False):
    """What `spo train` does before loading a model: build the task, load both splits."""
    task = task or build_task(cfg.task.name, **cfg.task.options)
    task.problems("train", cfg.task.train_limit)
    task.problems("eval", cfg.task.eval_limit)
    return Path(cfg.output_dir or ".")


@contextlib.contextmanager
def stand_in_training() -> Iterator[None]:
    real = sys.modules["spo.train.loop"].train
    sys.modules["spo.train.loop"].train = _stand_in_for_training
    try:
        yield
    finally:
        sys.modules["spo.train.loop"].train = real


def spo_train(args: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of `spo train --config smoke ARGS` (inside `stand_in_training`)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = spo_main(["train", "--config", "smoke", *args])
    return code, err.getvalue()


def _names_a_key(message: str, keys: list[str]) -> bool:
    for key in keys:
        parts = key.split(".")
        for n in range(len(parts), 0, -1):
            if re.search(rf"(?<![\w.]){re.escape('.'.join(parts[:n]))}(?!\w)", message):
                return True
    return False


def check_overrides(args: list[str]) -> str:
    """"accepted" or "rejected"; AssertionError when neither cleanly."""
    code, err = spo_train(args)
    assert code in (0, 2), (args, code, err)
    if code == 0:
        return "accepted"
    keys = [a.split("=", 1)[0].strip() for a in args]
    message = _message(err)
    assert _names_a_key(message, keys), (args, err)
    return "rejected"


def _message(err: str) -> str:
    """spo's one-line message: the last line of stderr (warnings may come before it)."""
    assert "Traceback" not in err, err
    message = err.strip().splitlines()[-1]
    assert message.startswith("spo: "), err
    return message


def check_data(content: bytes, folder: Path) -> list[str]:
    """`content` as a GSM8K train/eval file and as a MATH file: for each, "accepted" or
    "rejected" (naming the file and line); AssertionError when neither cleanly."""
    outcomes = []
    for name, options in [("gsm8k", "{{train_path: {0}, eval_path: {0}}}"), ("math500", "{{path: {0}, eval_size: 0}}")]:
        path = folder / f"{name}.jsonl"
        path.write_bytes(content)
        code, err = spo_train([f"task.name={name}", f"task.options={options.format(path)}", "task.train_limit=null"])
        assert code in (0, 2), (content, code, err)
        if code == 2:
            assert re.search(rf"{re.escape(str(path))}(:\d+:|: no data rows)", _message(err)), (content, err)
        outcomes.append("accepted" if code == 0 else "rejected")
    return outcomes


_TASKS: dict[str, Any] = {}


def _tasks() -> dict[str, Any]:
    if not _TASKS:
        _TASKS["math500"] = build_task("math500", path="/dev/null", timeout_s=GRADE_SECONDS)
        _TASKS["gsm8k"] = build_task("gsm8k")
        _TASKS["reasoning_gym"] = build_task("reasoning_gym", train_size=4, eval_size=0)
        _TASKS["arith_steps"] = build_task("arith_steps", train_size=4, eval_size=0)
    return _TASKS


def check_answer(answer: str) -> str:
    """The reward of a response ending in `answer` (boxed, after ####, bare) under every task."""
    tasks = _tasks()
    problems = {"math500": Problem("m", "q", "\\frac{1}{2}"), "gsm8k": Problem("g", "q", "42"),
                "reasoning_gym": tasks["reasoning_gym"].problems("train")[0],
                "arith_steps": tasks["arith_steps"].problems("train")[0]}
    for text in (f"The answer is \\boxed{{{answer}}}", f"work\n#### {answer}", answer):
        for name, task in tasks.items():
            t0 = time.perf_counter()
            reward = task.reward(problems[name], text, truncated=False)
            seconds = time.perf_counter() - t0
            assert reward in (0.0, 1.0), (name, answer[:100], reward)
            assert seconds < GRADE_SECONDS + SLACK_SECONDS, (name, answer[:100], seconds)
    return "accepted"


# ---------------------------------------------------------------------------------------

def fuzz(examples: int) -> dict[str, Counter]:
    counts = {"overrides": Counter(), "data files (as GSM8K and as MATH)": Counter(), "answers": Counter()}
    quiet = settings(max_examples=examples, deadline=None, database=None,
                     suppress_health_check=list(HealthCheck))

    @quiet
    @given(overrides)
    def run_overrides(args):
        counts["overrides"][check_overrides(args)] += 1

    @quiet
    @given(data_files)
    def run_data(content):
        with tempfile.TemporaryDirectory() as folder:
            counts["data files (as GSM8K and as MATH)"].update(check_data(content, Path(folder)))

    @settings(max_examples=examples // 2, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(answers)
    def run_answers(answer):
        counts["answers"][check_answer(answer)] += 1

    with stand_in_training():
        for name, fn in zip(counts, (run_overrides, run_data, run_answers)):
            try:
                fn()
            except Exception as err:  # hypothesis has shrunk it to a minimal failing case
                counts[name]["failures"] += 1
                print(f"FAILURE ({name}): {err}", file=sys.stderr)
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=2000, help="override lists and data files; answers: half")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # before spo's own basicConfig: keep its log off the terminal
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # `spo train`'s "run folder: ..." lines
        counts = fuzz(args.examples)
    total = Counter()
    for name, c in counts.items():
        total.update(c)
        print(f"{name}: tried {sum(v for k, v in c.items() if k != 'failures')}, accepted {c['accepted']}, "
              f"rejected cleanly {c['rejected']}, failures {c['failures']}")
    print(f"total: tried {total['accepted'] + total['rejected']}, accepted {total['accepted']}, rejected cleanly "
          f"{total['rejected']}, failures {total['failures']} in {(time.perf_counter() - t0) / 60:.1f} min")
    return 1 if total["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
