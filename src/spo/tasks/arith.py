"""Procedural multi-step arithmetic with gold step-by-step solutions (task `arith_steps`).

A problem is a chain of integers joined by operators, evaluated left to right:

    question  "12+7-5+9"
    solution  "12+7=19\\n19-5=14\\n14+9=23\\n#### 23"

Every line of the solution is one step (previous result, operator, next operand, result),
so an error made in step k carries into every later step and into the final answer: the
outcome reward alone does not say which step went wrong, which is what credit assignment
methods (SPO's segments) are about. Multiplication binds tighter than +/- in ordinary
notation, so when `*` follows a +/- prefix the prefix is parenthesised in the question
("(12+7)*3-5"); the question then means the same under ordinary precedence and left to
right, and the solution is always left to right.

Generation is pure Python (`random.Random`, seeded with a string, which Python hashes with
SHA-512: independent of PYTHONHASHSEED and of the platform). Train and eval come from two
separate streams; eval questions that also occur in train are dropped, so the splits are
disjoint.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from spo.tasks.problems import Problem

OPERATORS = "+-*"


@dataclass(frozen=True)
class ArithSpec:
    """What problems look like; `check()` validates it (ValueError naming the option)."""

    min_terms: int = 3
    max_terms: int = 3
    min_operand: int = 0
    max_operand: int = 99
    ops: str = "+-"
    max_factor: int = 9
    allow_negative: bool = False

    def check(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"arith_steps: {message}")

        need(self.min_terms >= 2, f"min_terms must be >= 2, got {self.min_terms}")
        need(self.max_terms >= self.min_terms, f"max_terms ({self.max_terms}) must be >= min_terms ({self.min_terms})")
        need(self.min_operand >= 0, f"min_operand must be >= 0, got {self.min_operand}")
        need(self.max_operand >= self.min_operand,
             f"max_operand ({self.max_operand}) must be >= min_operand ({self.min_operand})")
        need(bool(self.ops) and all(c in OPERATORS for c in self.ops),
             f"ops must be a non-empty string of {OPERATORS!r}, got {self.ops!r}")
        need(len(set(self.ops)) == len(self.ops), f"ops has a repeated operator: {self.ops!r}")
        need(self.max_factor >= 0, f"max_factor must be >= 0, got {self.max_factor}")


def _next_step(rng: random.Random, spec: ArithSpec, value: int) -> tuple[str, int]:
    """(operator, operand) for the next step from current result `value`."""
    op = rng.choice(spec.ops)
    if op == "*":
        # Products of two large numbers are beyond a tiny model; a small factor keeps
        # multiplication a one-digit table lookup.
        return op, rng.randint(0, spec.max_factor)
    if op == "-" and not spec.allow_negative:
        if value < spec.min_operand:  # nothing can be subtracted without going negative
            op = "+"
        else:
            return op, rng.randint(spec.min_operand, min(spec.max_operand, value))
    return op, rng.randint(spec.min_operand, spec.max_operand)


def apply_op(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown operator {op!r}")


def render_question(terms: list[int], ops: list[str]) -> str:
    """Terms joined by ops; a +/- prefix followed by `*` is parenthesised (see module doc)."""
    expr = str(terms[0])
    for op, term in zip(ops, terms[1:]):
        if op == "*" and any(c in expr for c in "+-"):
            expr = f"({expr})"
        expr += f"{op}{term}"
    return expr


def render_solution(terms: list[int], ops: list[str]) -> tuple[str, list[int]]:
    """The step-by-step solution and the intermediate results (the last is the answer)."""
    value, lines, results = terms[0], [], []
    for op, term in zip(ops, terms[1:]):
        new = apply_op(value, op, term)
        lines.append(f"{value}{op}{term}={new}")
        results.append(new)
        value = new
    lines.append(f"#### {value}")
    return "\n".join(lines), results


def random_chain(rng: random.Random, spec: ArithSpec) -> tuple[list[int], list[str]]:
    """Terms and operators of one random problem."""
    n = rng.randint(spec.min_terms, spec.max_terms)
    terms = [rng.randint(spec.min_operand, spec.max_operand)]
    ops: list[str] = []
    value = terms[0]
    for _ in range(n - 1):
        op, term = _next_step(rng, spec, value)
        ops.append(op)
        terms.append(term)
        value = apply_op(value, op, term)
    return terms, ops


def make_problem(terms: list[int], ops: list[str], problem_id: str) -> Problem:
    solution, results = render_solution(terms, ops)
    return Problem(
        id=problem_id,
        question=render_question(terms, ops),
        answer=str(results[-1]),
        solution=solution,
        meta={"terms": terms, "ops": ops, "results": results},
    )


def generate(spec: ArithSpec, split: str, seed: int, size: int, exclude: set[str] = frozenset(),
             max_tries_per_problem: int = 50) -> list[Problem]:
    """`size` distinct problems of one split, none of whose questions is in `exclude`.

    Raises ValueError when the problem space is too small to find them (e.g. 2 terms of
    one digit and a large train set)."""
    rng = random.Random(f"arith_steps/{split}/{seed}")
    seen, problems = set(exclude), []
    tries = 0
    while len(problems) < size:
        tries += 1
        if tries > max_tries_per_problem * max(size, 1):
            raise ValueError(
                f"arith_steps: found only {len(problems)} distinct {split} problems of {size} asked for; "
                "the problem space is too small (raise max_operand or max_terms, or lower the sizes)"
            )
        terms, ops = random_chain(rng, spec)
        problem = make_problem(terms, ops, f"arith_steps/{split}/{seed}/{len(problems)}")
        if problem.question in seen:
            continue
        seen.add(problem.question)
        problems.append(problem)
    return problems


def splits(spec: ArithSpec, *, seed: int, train_size: int, eval_size: int) -> tuple[list[Problem], list[Problem]]:
    """Disjoint (train, eval) problem lists; each is a pure function of its arguments."""
    train = generate(spec, "train", seed, train_size)
    evals = generate(spec, "eval", seed, eval_size, exclude={p.question for p in train})
    return train, evals


def first_wrong_step(problem: Problem, response: str) -> int | None:
    """0-based index of the first solution step that is missing or wrong in `response`,
    len(steps) when every step is right but the final `#### N` line is missing or wrong,
    None when the whole response matches the gold solution line by line.

    For analysing where a model goes wrong (credit assignment); rewards never use it."""
    gold_lines = (problem.solution or "").split("\n")
    got = response.strip().split("\n")
    for i, gold in enumerate(gold_lines):
        if i >= len(got) or got[i].strip() != gold:
            return i
    return None
