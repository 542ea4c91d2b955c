"""Segment partition: where to cut a response into segments (SPO section 1).

A response y_1..y_T (0-indexed here as tokens 0..T-1) is cut at boundaries
    0 = t_0 < t_1 < ... < t_K = T,
segment k (1-based) being tokens t_{k-1} .. t_k - 1. A boundary t is a *state*: the
prompt plus the first t response tokens. Values V(t_k) are estimated at boundaries and
segment k gets the advantage A_k = V(t_k) - V(t_{k-1}).

Pure functions over plain lists of per-token probabilities (old policy, sampling
temperature): no I/O, no engine.
"""

from __future__ import annotations

import math
from typing import Sequence


def cutpoints(probs: Sequence[float], rho: float) -> list[int]:
    """Indices of tokens whose sampling probability is below `rho` (strictly).

    The same rule as the probability mask (`spo.optimize.losses.probability_mask`), so the
    cutpoints are exactly the tokens the masked loss counts."""
    if not 0 < rho <= 1:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    return [i for i, p in enumerate(probs) if p < rho]


def cutpoints_from_logprobs(logprobs: Sequence[float], rho: float) -> list[int]:
    """`cutpoints` on log-probabilities, compared as log p < log rho (no exp round-off)."""
    if not 0 < rho <= 1:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    log_rho = math.log(rho)
    return [i for i, lp in enumerate(logprobs) if lp < log_rho]


def _thin(points: list[int], max_points: int) -> list[int]:
    """Keep `max_points` of `points`, evenly spread, first one always kept."""
    if len(points) <= max_points:
        return points
    if max_points <= 0:
        return []
    step = len(points) / max_points
    return [points[int(math.floor(i * step))] for i in range(max_points)]


def cutpoint_boundaries(
    cuts: Sequence[int], length: int, interval: int = 5, max_segments: int | None = None
) -> list[int]:
    """Boundaries from cutpoints: one just before every `interval`-th cutpoint.

    The 1st, (1+interval)-th, (1+2*interval)-th, ... cutpoint opens a segment, so every
    segment after the first holds `interval` low-probability tokens (the last may hold
    fewer), and the first segment (before the first cutpoint) holds none: with the
    probability mask it carries no loss, which is why the reference needs no V(t_0)
    unless the first token is itself a cutpoint. A cutpoint at token 0 coincides with
    t_0. No cutpoint at all gives one segment [0, T].

    `max_segments` caps K: when there would be more, the opening cutpoints are thinned
    evenly (every segment then holds about `len(cuts) / (max_segments - 1)` cutpoints).
    """
    if length < 1:
        raise ValueError(f"a response needs at least one token, got length {length}")
    if interval < 1:
        raise ValueError(f"interval must be >= 1, got {interval}")
    if max_segments is not None and max_segments < 1:
        raise ValueError(f"max_segments must be >= 1 or None, got {max_segments}")
    if any(not 0 <= c < length for c in cuts):
        raise ValueError(f"cutpoints must lie in [0, {length}), got {list(cuts)}")
    openers = sorted(cuts)[::interval]
    inner = [c for c in openers if c > 0]  # a cutpoint at 0 is t_0 itself
    if max_segments is not None:
        inner = _thin(inner, max_segments - 1)
    return [0, *inner, length]


def fixed_boundaries(length: int, segment_length: int, max_segments: int | None = None) -> list[int]:
    """A boundary every `segment_length` tokens (the last segment may be shorter).

    `max_segments` caps K by merging the tail: the last segment takes what is left."""
    if length < 1:
        raise ValueError(f"a response needs at least one token, got length {length}")
    if segment_length < 1:
        raise ValueError(f"segment_length must be >= 1, got {segment_length}")
    inner = list(range(segment_length, length, segment_length))
    if max_segments is not None:
        if max_segments < 1:
            raise ValueError(f"max_segments must be >= 1 or None, got {max_segments}")
        inner = inner[: max_segments - 1]
    return [0, *inner, length]


def delimiter_boundaries(token_texts: Sequence[str], delimiter: str = "\n",
                         max_segments: int | None = None) -> list[int]:
    """Boundaries at reasoning-step ends (VinePPO): just after every token that completes
    an occurrence of `delimiter` in the response text (the concatenation of `token_texts`,
    each token's own text). So a step is a line with its newline; no delimiter gives one
    segment; a delimiter at the very end adds nothing; a delimiter split over several
    tokens ends its step at the token that completes it; a step may be one token (e.g.
    the EOS after a final newline). `max_segments` keeps the first max_segments - 1 step
    ends (the last segment takes the rest)."""
    length = len(token_texts)
    if length < 1:
        raise ValueError(f"a response needs at least one token, got length {length}")
    if not delimiter:
        raise ValueError("the step delimiter must be a non-empty string")
    if max_segments is not None and max_segments < 1:
        raise ValueError(f"max_segments must be >= 1 or None, got {max_segments}")
    ends, offset = [], 0  # ends[i]: text offset just after token i
    for text in token_texts:
        offset += len(text)
        ends.append(offset)
    full = "".join(token_texts)
    inner: list[int] = []
    start = full.find(delimiter)
    while start != -1:
        stop = start + len(delimiter)
        token = next(i for i, e in enumerate(ends) if e >= stop)  # the token that completes it
        if 0 < token + 1 < length and (not inner or inner[-1] < token + 1):
            inner.append(token + 1)
        start = full.find(delimiter, stop)
    if max_segments is not None:
        inner = inner[: max_segments - 1]
    return [0, *inner, length]


def lowest_probability_boundaries(logprobs: Sequence[float], cuts: Sequence[int], probe_points: int) -> list[int]:
    """Boundaries just before the `probe_points` cutpoints of lowest probability (ties:
    the earlier token first); a cutpoint at token 0 is t_0 itself and not counted. Where
    the policy was least sure is where a value estimate says most about the token."""
    length = len(logprobs)
    if length < 1:
        raise ValueError(f"a response needs at least one token, got length {length}")
    if probe_points < 1:
        raise ValueError(f"probe_points must be >= 1, got {probe_points}")
    inner = sorted(sorted((c for c in cuts if c > 0), key=lambda c: (logprobs[c], c))[:probe_points])
    return [0, *inner, length]


def partition_response(
    logprobs: Sequence[float],
    *,
    rule: str = "cutpoint",
    rho: float = 0.9,
    interval: int = 5,
    segment_length: int = 30,
    max_segments: int | None = None,
    token_texts: Sequence[str] | None = None,
    delimiter: str = "\n",
    probe_points: int = 4,
) -> tuple[list[int], list[int]]:
    """(boundaries, cutpoints) of one response of len(logprobs) tokens under `rule`:
    "cutpoint" (`cutpoint_boundaries`), "fixed" (`fixed_boundaries`), "step"
    (`delimiter_boundaries` on `token_texts`, each response token's text) or "lowest"
    (`lowest_probability_boundaries`, up to `probe_points`). The cutpoints
    (tokens with probability below rho) are returned either way, for the episode log."""
    cuts = cutpoints_from_logprobs(logprobs, rho)
    if rule == "fixed":
        return fixed_boundaries(len(logprobs), segment_length, max_segments), cuts
    if rule == "step":
        if token_texts is None or len(token_texts) != len(logprobs):
            raise ValueError("the step rule needs the text of every response token")
        return delimiter_boundaries(token_texts, delimiter, max_segments), cuts
    if rule == "lowest":
        return lowest_probability_boundaries(logprobs, cuts, probe_points), cuts
    if rule != "cutpoint":
        raise ValueError(f"unknown partition rule {rule!r}; known: cutpoint, fixed, step, lowest")
    return cutpoint_boundaries(cuts, len(logprobs), interval, max_segments), cuts
