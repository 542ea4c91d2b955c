"""Answer extraction and normalisation: response text in, comparable answer out.

Everything here is pure (no I/O, no processes, signals or threads) and never executes
model text: numbers are parsed and compared as exact `fractions.Fraction`s. MATH
(LaTeX) answers are only normalised here (`normalize_math_answer`); comparing them with
`math_verify` under a time limit, which needs a signal timer or a worker process, is
`spo.tasks.grader.math_answers_equal`.

Answer formats (`AnswerFormat`), i.e. where in a response the final answer is read:
    last_hash    text after the LAST "####" (GSM8K's convention). Several markers are
                 not an error (the reference scored them -2): the last one wins, as it
                 is the model's final word. No marker -> no answer (reward 0); there is
                 no fall-back to "last number", so the format is part of what is learned.
    last_number  the last number anywhere in the text (for models that ignore formats).
    answer_tag   content of the last <answer>...</answer> (reasoning-gym's convention).
    boxed        content of the last \\boxed{...} / \\fbox{...} (MATH's convention).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Literal

AnswerFormat = Literal["last_hash", "last_number", "answer_tag", "boxed"]
ANSWER_FORMATS: tuple[str, ...] = ("last_hash", "last_number", "answer_tag", "boxed")

DEFAULT_INSTRUCTIONS: dict[str, str] = {
    "last_hash": "Solve the problem step by step. Then write the final answer on the last line "
    "after '####', for example: #### 42",
    "last_number": "Solve the problem step by step and end with the final answer as a number.",
    "answer_tag": "Solve the problem step by step. Then give the final answer inside "
    "<answer></answer> tags, for example: <answer>42</answer>",
    "boxed": "Solve the problem step by step. Then put the final answer in \\boxed{}.",
}
"""Text appended to each question (after a blank line) so the model knows where to put the
answer; one per answer format. Tasks take `instruction=` to override it ("" for none)."""


def default_instruction(answer_format: str) -> str:
    """The instruction that matches `answer_format` (raises ValueError for unknown formats)."""
    check_answer_format(answer_format)
    return DEFAULT_INSTRUCTIONS[answer_format]


def check_answer_format(answer_format: str) -> None:
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"unknown answer format {answer_format!r}; expected one of {ANSWER_FORMATS}")


# --------------------------------------------------------------------------------------
# Locating the answer span in a response
# --------------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def _balanced_group(text: str, start: int) -> str | None:
    """Content of the brace group opening at text[start] == "{", or None if never closed.

    Escaped braces (`\\{`, `\\}`) do not count, so `\\boxed{\\{1,2\\}}` works."""
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the LAST `\\boxed{...}` or `\\fbox{...}` (nested braces kept), or the
    `\\boxed 5` form (up to the next space or `$`).

    Returns None when there is no box, the box is empty, or the last box is never closed
    (a cut-off answer): we do not fall back to an earlier box, which the model abandoned."""
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    end = matches[-1].end()
    rest = text[end:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        content = _balanced_group(text, end + len(rest) - len(stripped))
    elif rest[:1].isspace() and stripped:
        content = re.split(r"[\s$]", stripped, maxsplit=1)[0]
    else:
        content = None
    if content is None or not content.strip():
        return None
    return content.strip()


def extract_answer_tag(text: str) -> str | None:
    """Content of the last `<answer>...</answer>` (stripped), None if absent or empty."""
    matches = _ANSWER_TAG_RE.findall(text)
    if not matches or not matches[-1].strip():
        return None
    return matches[-1].strip()


def extract_after_hash(text: str) -> str | None:
    """First non-empty line after the LAST "####" (stripped, trailing period dropped)."""
    idx = text.rfind("####")
    if idx < 0:
        return None
    for line in text[idx + 4 :].splitlines():
        line = line.strip().rstrip(".").strip()
        if line:
            return line
    return None


# --------------------------------------------------------------------------------------
# Numbers (GSM8K-style answers)
# --------------------------------------------------------------------------------------

# A number: optional minus (only when not glued to a preceding word/digit/")", so "5-3"
# yields 3 and not -3; and glued to what follows, so "10 - 5" yields 5), optional currency sign, digits with proper thousands commas or
# plain digits, optional decimals, optional "/denominator" (a simple fraction).
_NUMBER_RE = re.compile(
    r"(?P<sign>(?<![\w)])-)?(?:[$€£]\s?)?"
    r"(?P<body>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:/(?P<den>\d+))?"
)
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\s*\{\s*(-?[\d.,]+)\s*\}\s*\{\s*([\d.,]+)\s*\}")
_MAX_DIGITS = 1000  # longer digit strings are garbage, not answers (and slow to convert)


def _clean_number_text(text: str) -> str:
    """Rewrite LaTeX/Unicode number spellings into plain ones: \\frac{3}{4} -> 3/4,
    \\$ -> $, 1{,}000 -> 1,000, Unicode minus -> '-'."""
    text = text.replace("\u2212", "-").replace("{,}", ",").replace("\\$", "$").replace("\\%", "%")
    return _LATEX_FRAC_RE.sub(r"\1/\2", text)


def _match_to_fraction(m: re.Match[str]) -> Fraction | None:
    body, den = m.group("body").replace(",", ""), m.group("den")
    if len(body) > _MAX_DIGITS or (den is not None and len(den) > _MAX_DIGITS):
        return None
    try:
        value = Fraction(body)
        if den is not None:
            if "." in body or int(den) == 0:
                return None
            value /= int(den)
    except (ValueError, ZeroDivisionError):
        return None
    return -value if m.group("sign") else value


def parse_number(text: str) -> Fraction | None:
    """Parse ONE number written the way answers are: "1,234", "$18.00", "18%", "-5",
    "3/4", "\\frac{3}{4}", "0.75", "18 dollars" (trailing words ignored).

    Returns None when `text` does not start with a number (after whitespace). Exact:
    Fractions, no float parsing, no eval."""
    text = _clean_number_text(text.strip())
    m = _NUMBER_RE.match(text)
    return _match_to_fraction(m) if m else None


def _numbers_in(text: str) -> list[re.Match[str]]:
    return list(_NUMBER_RE.finditer(_clean_number_text(text)))


def format_number(value: Fraction) -> str:
    """Canonical text of a number, so equal numbers vote together in maj@k:
    18 -> "18", 3/4 -> "0.75" (terminating decimals), 1/3 -> "1/3"."""
    if value.denominator == 1:
        return str(value.numerator)
    den, places = value.denominator, 0
    while den % 10 == 0:
        den //= 10
        places += 1
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    places += max(twos, fives)
    scaled = abs(value.numerator) * 10**places // value.denominator
    digits = str(scaled).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def extract_gsm8k_answer(text: str, mode: AnswerFormat = "last_hash") -> str | None:
    """The numeric answer of a response, in canonical form (`format_number`), or None.

    mode "last_hash": the first number after the last "####" (None without a marker);
    "last_number": the last number in the text; "boxed" / "answer_tag": the first number
    inside the last box / answer tag. Commas, currency, units and "%" are dropped:
    "#### $1,000.00 dollars" -> "1000"."""
    check_answer_format(mode)
    if mode == "last_number":
        matches = _numbers_in(text)
        return _canonical_or_none(matches[-1]) if matches else None
    span = {"last_hash": _after_last_hash, "boxed": extract_boxed, "answer_tag": extract_answer_tag}[mode](text)
    if span is None:
        return None
    matches = _numbers_in(span)
    return _canonical_or_none(matches[0]) if matches else None


def _after_last_hash(text: str) -> str | None:
    idx = text.rfind("####")
    return None if idx < 0 else text[idx + 4 :]


def _canonical_or_none(m: re.Match[str]) -> str | None:
    value = _match_to_fraction(m)
    return None if value is None else format_number(value)


def numbers_equal(pred: str | None, gold: str | None, rel_tol: float = 1e-6) -> bool:
    """Whether two number strings denote the same number.

    Two integers must match exactly (so 30-digit answers are not "close enough"); otherwise
    |pred - gold| <= rel_tol * max(1, |gold|), computed on exact Fractions, so that
    "0.333333" matches "1/3" but "0.33" does not."""
    if pred is None or gold is None:
        return False
    p, g = parse_number(pred), parse_number(gold)
    if p is None or g is None:
        return False
    if p == g:
        return True
    if p.denominator == 1 and g.denominator == 1:
        return False
    return abs(p - g) <= Fraction(rel_tol) * max(Fraction(1), abs(g))


# --------------------------------------------------------------------------------------
# Free-form answers (raw strings, e.g. reasoning-gym)
# --------------------------------------------------------------------------------------


def extract_answer(text: str, answer_format: AnswerFormat) -> str | None:
    """The raw answer string of a response under `answer_format` (no number canonicalisation,
    which would be wrong for non-numeric answers, e.g. "3/6" must not become "1/2" when the
    task asks for a reduced fraction). "last_number" drops thousands commas and currency."""
    check_answer_format(answer_format)
    if answer_format == "last_hash":
        return extract_after_hash(text)
    if answer_format == "answer_tag":
        return extract_answer_tag(text)
    if answer_format == "boxed":
        return extract_boxed(text)
    matches = _numbers_in(text)
    if not matches:
        return None
    m = matches[-1]
    den = f"/{m.group('den')}" if m.group("den") else ""
    return ("-" if m.group("sign") else "") + m.group("body").replace(",", "") + den


# --------------------------------------------------------------------------------------
# MATH answers: the normalisation behind the cheap exact-match test (and maj@k voting);
# the math_verify comparison under a time limit lives in spo.tasks.grader
# --------------------------------------------------------------------------------------

_SIZING_RE = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![A-Za-z])|\\[!,;: ]|~")
_COMMAND_SPACE_RE = re.compile(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])")  # "\pi r": this space matters


def normalize_math_answer(answer: str) -> str:
    """Conservative LaTeX normalisation for a first exact-match test (and for voting):
    drops whitespace (except the one ending a command name, as in "\\pi r"), spacing
    commands, \\left/\\right/\\big sizing, currency \\$, surrounding $...$, a trailing period, and maps
    \\dfrac/\\tfrac to \\frac. Never changes meaning, so a match is always correct."""
    s = answer.strip().rstrip(".").strip()
    if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
        s = s.strip("$")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("\\$", "")
    s = _SIZING_RE.sub("", s)
    s = _COMMAND_SPACE_RE.sub("\\1\x00", s)  # protect spaces that end a command name
    s = "".join(s.split()).replace("\x00", " ")
    return s.rstrip(".")
