"""The rollout-engine interface. Engines turn token-id prompts into sampled responses.

Everything is token ids: a prompt (or a prompt plus a partial response) is a list of
ids, and an engine conditions on exactly those ids, never on a decode/re-encode of
them. This is what lets SPO continue from the exact prefix a response was cut at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, Sequence

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
