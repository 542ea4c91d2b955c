"""Countdown (24-point style) puzzles for spo: "use these numbers to make the target".

    python examples/countdown/countdown.py --write examples/countdown/puzzles.jsonl   # the data
    reward = "examples/countdown/countdown.py:reward"                                  # the reward

A response is graded by reading the expression after its last "####" and evaluating it
SAFELY: the text is parsed with `ast` and only integer literals, + - * / and parentheses
are accepted (no names, calls, attributes, powers or unary minus), computed exactly with
Fractions; the model's text is never passed to eval(). Reward: 1.0 for an expression that
uses exactly the given numbers (each once) and equals the target, 0.1 for a well-formed
expression over the given numbers with the wrong value (format credit), 0 otherwise.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
from collections import Counter
from fractions import Fraction

MAX_EXPRESSION_CHARS = 200  # nothing longer is an answer to a 4-number puzzle; bounds the parser's work
_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.Div: lambda a, b: a / b}


def evaluate_expression(text: str) -> tuple[Fraction, list[int]] | None:
    """(value, the integers it uses) of an arithmetic expression, or None when it is not one
    (anything but integers, + - * / and parentheses) or divides by zero."""
    text = text.strip().rstrip(".").replace("×", "*").replace("÷", "/")
    if not text or len(text) > MAX_EXPRESSION_CHARS:
        return None
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return None
    numbers: list[int] = []

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            numbers.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not allowed: {type(node).__name__}")

    try:
        return value(tree.body), numbers
    except (ValueError, ZeroDivisionError, RecursionError):
        return None


def reward(prompt: str, response: str, problem: dict, finish_reason: str) -> float:
    """1.0 solved, 0.1 a valid expression over the given numbers but the wrong value, else 0."""
    if finish_reason == "length" or "####" not in response:
        return 0.0
    lines = response.rsplit("####", 1)[1].strip().splitlines()
    result = evaluate_expression(lines[0]) if lines else None
    if result is None:
        return 0.0
    total, used = result
    if Counter(used) != Counter(problem["numbers"]):
        return 0.0
    return 1.0 if total == problem["target"] else 0.1


def make_puzzles(count: int, seed: int = 0, size: int = 4, max_number: int = 9) -> list[dict]:
    """`count` distinct puzzles: `size` numbers in 1..max_number combined by a random
    expression whose value (a whole number 1..100) is the target; the expression is kept as
    the gold answer (one solution among possibly several)."""
    rng = random.Random(seed)
    puzzles, seen = [], set()
    while len(puzzles) < count:
        numbers = [rng.randint(1, max_number) for _ in range(size)]
        parts = [str(n) for n in numbers]
        while len(parts) > 1:  # join two random neighbours with a random operator
            i = rng.randrange(len(parts) - 1)
            parts[i : i + 2] = [f"({parts[i]} {rng.choice('+-*/')} {parts[i + 1]})"]
        expression = parts[0][1:-1]
        result = evaluate_expression(expression)
        if result is None or result[0].denominator != 1 or not 1 <= result[0] <= 100:
            continue
        key = (tuple(sorted(numbers)), int(result[0]))
        if key in seen:
            continue
        seen.add(key)
        puzzles.append({"numbers": sorted(numbers), "target": int(result[0]), "answer": expression})
    return puzzles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", required=True, help="JSONL file to write")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with open(args.write, "w") as f:
        for row in make_puzzles(args.count, args.seed):
            f.write(json.dumps(row) + "\n")
    print(f"wrote {args.count} puzzles to {args.write}")


if __name__ == "__main__":
    main()
