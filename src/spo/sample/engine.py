"""The rollout-engine interface. Engines turn token-id prompts into sampled responses.

Everything is token ids: a prompt (or a prompt plus a partial response) is a list of
ids, and an engine conditions on exactly those ids, never on a decode/re-encode of
them. This is what lets SPO continue from the exact prefix a response was cut at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol, Sequence

FinishReason = Literal["eos", "stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. `temperature == 0` means greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    seed: int | None = None  # seeds the engine's generator for this call when given
    stop: tuple[str, ...] = ()  # stop strings, matched on the generated text (see `stop_cut`)


@dataclass
class Rollout:
    """One sampled continuation of one context.

    logprobs[i] is log p(response_ids[i] | context, response_ids[:i]) under the
    *sampling* distribution softmax(logits / temperature) (before top-p/top-k
    truncation; for greedy decoding temperature 1 is used). finish_reason is
    "eos" when the model emitted a stop token (which is kept as the last id of
    response_ids), "stop" when the generated text reached one of `params.stop` (the
    response then ends where that string begins, see `stop_cut`), and "length" when
    max_new_tokens (or the context limit) cut it.
    """

    context_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"


class RolloutEngine(Protocol):
    """What the trainer and SPO estimators need from a generation backend."""

    def generate(
        self,
        contexts: list[list[int]],
        params: SamplingParams,
        n: int = 1,
        max_new_tokens: Sequence[int] | None = None,
    ) -> list[list[Rollout]]:
        """Sample `n` continuations of each context; result[i] has n rollouts of contexts[i].

        `max_new_tokens[i]`, when given, replaces `params.max_new_tokens` for context i.

        Engines should encode each distinct context once and share it across its n
        samples (prefix / KV-cache reuse)."""
        ...

    def sync_weights(self) -> None:
        """Make the engine sample from the trainer's current weights (no-op when shared)."""
        ...

    def release_memory(self) -> None:
        """Free what sampling holds (vLLM's sleep mode) until the next generate or sync; the
        trainer calls it between sampling and the update. No-op for most engines."""
        ...


def stop_cut(token_texts: Sequence[str], stops: Sequence[str]) -> int | None:
    """Where a response ends because of a stop string: the number of its tokens to keep,
    or None when no stop string occurs in the text (the concatenation of `token_texts`,
    each generated token's own text).

    At the earliest occurrence of any stop string, the response keeps the tokens whose
    text ends at or before the point where it begins, so its ids, log-probs and text end
    where the stop string begins and the stop text is never graded. A token that holds
    the start of the stop string is dropped with it; a response is never empty: when the
    stop string begins in its first token, that token is kept."""
    if not stops:
        return None
    text = "".join(token_texts)
    starts = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    if not starts:
        return None
    begin, keep, offset = min(starts), 0, 0
    for piece in token_texts:
        offset += len(piece)
        if offset > begin:
            break
        keep += 1
    return max(keep, 1)


def first_stop_cut(token_texts: Sequence[str], stops: Sequence[str]) -> int | None:
    """Where a response ends when it is read token by token and stopped at the first token
    whose text completes a stop string: the number of its tokens to keep (`stop_cut` of the
    text read up to that token), or None when no stop string occurs."""
    text = "".join(token_texts)
    ends = [text.find(s) + len(s) for s in stops if s and s in text]
    if not ends:
        return None
    end, offset = min(ends), 0
    for k, piece in enumerate(token_texts):
        offset += len(piece)
        if offset >= end:
            return stop_cut(token_texts[: k + 1], stops)
    return stop_cut(token_texts, stops)  # pragma: no cover (end <= len(text))


class StopReader:
    """Reads one response's generated tokens as they come (one or several per step) and says
    where it ends once their text completes a stop string. Both engines use it, so a
    response stops at the same token whichever engine sampled it.

    Each token's own text (``tokenizer.decode([id])``) is kept; only the tail that the new tokens can
    complete is searched, so a long response costs no more per step than a short one."""

    def __init__(self, stops: Sequence[str], tokenizer: Any):
        self.stops = tuple(s for s in stops if s)
        self.tokenizer = tokenizer
        self.longest = max((len(s) for s in self.stops), default=0)
        self.texts: list[str] = []

    def read(self, new_ids: Sequence[int]) -> int | None:
        """Append the new tokens; the number of the response's tokens to keep if they
        completed a stop string (`first_stop_cut`), else None."""
        if not self.stops or not new_ids:
            return None
        tail_from = len(self.texts)
        self.texts.extend(self.tokenizer.decode([int(t)]) for t in new_ids)
        # a stop string the new tokens complete begins at most `longest` - 1 characters before them
        before = 0
        while tail_from > 0 and before < self.longest - 1:
            tail_from -= 1
            before += len(self.texts[tail_from])
        tail = "".join(self.texts[tail_from:])
        if not any(s in tail for s in self.stops):
            return None
        return first_stop_cut(self.texts, self.stops)


def check_generate_args(contexts: Sequence[Sequence[int]], params: SamplingParams, n: int,
                        max_new_tokens: Sequence[int] | None, tokenizer: Any) -> None:
    """The argument checks of `RolloutEngine.generate`, the same in every engine (ValueError)."""
    if n < 1:
        raise ValueError("n must be >= 1")
    if params.stop and tokenizer is None:
        raise ValueError("stop strings need the engine's tokenizer (to read the generated text)")
    for c in contexts:
        if len(c) == 0:
            raise ValueError("empty context: give at least one token (e.g. BOS)")
    if max_new_tokens is not None and len(max_new_tokens) != len(contexts):
        raise ValueError(f"{len(contexts)} contexts but {len(max_new_tokens)} max_new_tokens")


def requested_tokens(contexts: Sequence[Sequence[int]], params: SamplingParams,
                     max_new_tokens: Sequence[int] | None) -> list[int]:
    """Each context's cap on new tokens: `max_new_tokens[i]` when given, else the params'."""
    if max_new_tokens is None:
        return [int(params.max_new_tokens)] * len(contexts)
    return [int(m) for m in max_new_tokens]


def response_budget(context_length: int, cap: int, max_context: int | None) -> int:
    """How many tokens a response to a context of `context_length` may have: its cap, less
    whatever would pass `max_context` (context + response). <= 0 means none: the engine
    returns an empty "length" rollout."""
    return cap if max_context is None else min(cap, max_context - context_length)
