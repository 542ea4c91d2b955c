"""A rollout engine on top of a Hugging Face causal LM, with its own decode loop.

Why not ``model.generate``: we need (a) each distinct context prefilled once and its
KV cache shared by its n samples, (b) the exact log-prob of every sampled token under
the sampling distribution, (c) seeded, reproducible sampling, (d) finished rows
dropped from the batch as soon as they stop, and (e) token-id contexts of uneven
lengths (SPO continues from exact token prefixes). The loop below does all that with
the model's plain forward and a ``transformers.DynamicCache``.

Layout: contexts are LEFT-padded, with an explicit attention mask and position ids
``cumsum(mask) - 1``, so a padded context sees exactly the positions and keys it would
see alone. In float32 a context gives the same greedy continuation alone or in a batch,
and greedy(context + y[:j]) == y[j:] when greedy(context) == y. In bfloat16 different
batch shapes change matmul rounding, so near-tied argmaxes can flip; test exactness
in float32.

The log-probs it returns match teacher-forced scoring by
:func:`spo.optimize.logprobs.compute_logprobs` (to ~1e-5 in float32; bf16 differs by
rounding, ~1e-2).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from spo.sample.engine import (FinishReason, Rollout, SamplingParams, StopReader, check_generate_args,
                              requested_tokens, response_budget)

log = logging.getLogger(__name__)

__all__ = [
    "EngineStats",
    "HFEngine",
    "PreallocLayer",
    "default_stop_token_ids",
    "model_device",
]

# Top-p is first tried on this many highest-probability candidates (exact whenever
# they already hold top_p of the mass, which is almost always); else a full sort.
_TOP_P_CANDIDATES = 256


def model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def default_stop_token_ids(tokenizer, model=None) -> list[int]:
    """The tokenizer's eos id, the chat end token ``<|im_end|>`` if the vocabulary has
    it, and the model's generation-config eos id(s)."""
    ids: list[int] = []

    def add(x):
        if x is None:
            return
        for i in x if isinstance(x, (list, tuple)) else [x]:
            if i is not None and int(i) >= 0 and int(i) not in ids:
                ids.append(int(i))

    if tokenizer is not None:
        add(tokenizer.eos_token_id)
        vocab = tokenizer.get_vocab()
        add(vocab.get("<|im_end|>"))
    if model is not None:
        gen = getattr(model, "generation_config", None)
        add(getattr(gen, "eos_token_id", None))
    return ids


@dataclass
class EngineStats:
    """Counters of the last :meth:`HFEngine.generate` call."""

    contexts: int = 0
    prefilled_contexts: int = 0
    prefill_tokens: int = 0
    new_tokens: int = 0
    forward_passes: int = 0
    seconds: float = 0.0


@dataclass
class _Job:
    """One distinct context and the output slots (i, j) its samples fill."""

    context: list[int]
    slots: list[tuple[int, int]]
    budget: int  # max new tokens for this context


class HFEngine:
    """RolloutEngine over a (possibly peft-wrapped) HF causal LM, sharing its weights.

    Args:
        model: the policy; sampled from as it is (``sync_weights`` is a no-op).
        tokenizer: used only for default stop tokens and the pad id.
        stop_token_ids: ids that end a response (kept as its last token); default
            :func:`default_stop_token_ids`.
        max_context: limit on context + response tokens; default the model's
            ``max_position_embeddings``. A row that reaches it ends with "length".
        batch_size: most sequences decoded at once. Contexts are grouped so that the
            samples of a group fit; the n samples of a context share one prefill.
        pad_token_id: id written in padding (any valid id; it is masked out).
        prealloc_cache: write the KV cache into preallocated buffers instead of
            transformers' concatenating DynamicLayer (same results, less copying).
        share_prefill: encode each distinct context once for all its samples (default).
            False re-encodes the context for every sample, as ``model.generate`` with
            repeated prompts does; only there to measure what sharing saves.

    After each call, ``last_stats`` (:class:`EngineStats`) holds token counts and time.
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        stop_token_ids: Sequence[int] | None = None,
        max_context: int | None = None,
        batch_size: int = 64,
        pad_token_id: int | None = None,
        prealloc_cache: bool = True,
        share_prefill: bool = True,
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model = model
        self.tokenizer = tokenizer
        if stop_token_ids is None:
            stop_token_ids = default_stop_token_ids(tokenizer, model)
        self.stop_token_ids = [int(i) for i in stop_token_ids]
        cfg = model.config
        if max_context is None:
            max_context = getattr(cfg.get_text_config(), "max_position_embeddings", None)
        self.max_context = max_context
        self.batch_size = int(batch_size)
        if pad_token_id is None and tokenizer is not None:
            pad_token_id = tokenizer.pad_token_id
        if pad_token_id is None:
            pad_token_id = self.stop_token_ids[0] if self.stop_token_ids else 0
        self.pad_token_id = int(pad_token_id)
        self.last_stats = EngineStats()
        self.prealloc_cache = prealloc_cache
        self.share_prefill = share_prefill

    # ------------------------------------------------------------------ interface

    def sync_weights(self) -> None:
        """No-op: the engine samples from the trainer's model object itself."""

    def release_memory(self) -> None:
        """No-op: the engine keeps nothing between calls."""

    def generate(
        self,
        contexts: list[list[int]],
        params: SamplingParams,
        n: int = 1,
        max_new_tokens: Sequence[int] | None = None,
    ) -> list[list[Rollout]]:
        """Sample ``n`` continuations of each context (see RolloutEngine.generate).

        ``max_new_tokens[i]``, when given, caps context i instead of
        ``params.max_new_tokens`` (SPO continues a partial response within what is left
        of the response budget).

        Identical contexts (also across the list) are prefilled once. With
        ``params.seed`` set, the same call (same contexts, n, params, batch_size)
        returns the same rollouts; which samples a given context gets depends on the
        whole call, not on the context alone.
        """
        check_generate_args(contexts, params, n, max_new_tokens, self.tokenizer)
        t0 = time.perf_counter()
        stats = EngineStats(contexts=len(contexts))
        out: list[list[Rollout | None]] = [[None] * n for _ in contexts]

        # distinct contexts -> slots
        by_ctx: dict[tuple[tuple[int, ...], int], list[tuple[int, int]]] = {}
        for i, (c, cap) in enumerate(zip(contexts, requested_tokens(contexts, params, max_new_tokens))):
            by_ctx.setdefault((tuple(int(t) for t in c), cap), []).extend((i, j) for j in range(n))
        jobs: list[_Job] = []
        for (key, cap), slots in by_ctx.items():
            budget = response_budget(len(key), cap, self.max_context)
            if budget <= 0:
                for i, j in slots:
                    out[i][j] = Rollout(list(key), [], [], "length")
                continue
            step = self.batch_size if self.share_prefill else 1
            for s in range(0, len(slots), step):
                jobs.append(_Job(list(key), slots[s : s + step], budget))
        # similar lengths together: less padding
        jobs.sort(key=lambda jb: len(jb.context), reverse=True)
        groups: list[list[_Job]] = []
        cur: list[_Job] = []
        size = 0
        for jb in jobs:
            if cur and size + len(jb.slots) > self.batch_size:
                groups.append(cur)
                cur, size = [], 0
            cur.append(jb)
            size += len(jb.slots)
        if cur:
            groups.append(cur)

        model = self.model
        device = model_device(model)
        gen = torch.Generator(device=device)
        seed = params.seed
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        gen.manual_seed(int(seed))
        stop = torch.tensor(self.stop_token_ids or [-1], device=device)

        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                for group in groups:
                    self._run_group(group, params, gen, stop, device, out, stats)
        finally:
            model.train(was_training)
        stats.seconds = time.perf_counter() - t0
        self.last_stats = stats
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ internals

    def _forward(self, input_ids, attention_mask, position_ids, cache):
        return self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits[:, -1, :]

    def _run_group(self, group, params, gen, stop, device, out, stats) -> None:
        U = len(group)
        lens = [len(jb.context) for jb in group]
        L = max(lens)
        ids = torch.full((U, L), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((U, L), dtype=torch.long)
        for r, jb in enumerate(group):
            ids[r, L - lens[r] :] = torch.tensor(jb.context, dtype=torch.long)
            mask[r, L - lens[r] :] = 1
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(-1) - 1).clamp_(min=0)

        max_budget = max(jb.budget for jb in group)
        if self.prealloc_cache:
            cache = _make_cache(self.model.config, L + max_budget)
        else:
            cache = DynamicCache(config=self.model.config)
        logits = self._forward(ids, mask, pos, cache)
        stats.prefilled_contexts += U
        stats.prefill_tokens += sum(lens)
        stats.forward_passes += 1

        # expand each distinct context to its samples
        reps = torch.tensor([len(jb.slots) for jb in group], device=device)
        if bool((reps == 1).all()):
            row_src = None
        else:
            row_src = torch.repeat_interleave(torch.arange(U, device=device), reps)
            if bool((reps == reps[0]).all()):
                cache.batch_repeat_interleave(int(reps[0]))
            else:
                cache.batch_select_indices(row_src)
            logits = logits[row_src]
            mask = mask[row_src]
        slots = [s for jb in group for s in jb.slots]
        contexts = [jb.context for jb in group for _ in jb.slots]
        budget = torch.tensor([jb.budget for jb in group for _ in jb.slots], device=device)
        next_pos = torch.tensor([len(c) for c in contexts], device=device)
        B = len(slots)
        rows = list(range(B))  # rows still alive -> index into slots
        toks: list[list[int]] = [[] for _ in range(B)]
        lps: list[list[float]] = [[] for _ in range(B)]
        readers = [StopReader(params.stop, self.tokenizer) for _ in range(B)] if params.stop else None
        step = 0
        while True:
            tok, lp = _sample(logits, params, gen)
            step += 1
            tok_l, lp_l = tok.tolist(), lp.tolist()
            for k, r in enumerate(rows):
                toks[r].append(tok_l[k])
                lps[r].append(lp_l[k])
            stats.new_tokens += len(rows)
            is_stop = torch.isin(tok, stop)
            done = is_stop | (budget <= step)
            cuts = [readers[r].read([t]) for r, t in zip(rows, tok_l)] if readers is not None else None
            if cuts is not None and any(c is not None for c in cuts):
                done = done | torch.tensor([c is not None for c in cuts], device=device)
            if bool(done.any()):
                done_l, stop_l = done.tolist(), is_stop.tolist()
                keep = []
                for k, r in enumerate(rows):
                    if done_l[k]:
                        i, j = slots[r]
                        cut = cuts[k] if cuts is not None else None
                        if cut is not None:  # a stop string: the response ends where it begins
                            out[i][j] = Rollout(list(contexts[r]), toks[r][:cut], lps[r][:cut], "stop")
                            continue
                        reason: FinishReason = "eos" if stop_l[k] else "length"
                        out[i][j] = Rollout(list(contexts[r]), toks[r], lps[r], reason)
                    else:
                        keep.append(k)
                if not keep:
                    break
                rows = [rows[k] for k in keep]
                kt = torch.tensor(keep, device=device)
                cache.batch_select_indices(kt)
                tok, mask, budget, next_pos = tok[kt], mask[kt], budget[kt], next_pos[kt]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            logits = self._forward(tok[:, None], mask, next_pos[:, None], cache)
            stats.forward_passes += 1
            next_pos = next_pos + 1
        del cache


def _sample(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator):
    """Next tokens and their log-probs under softmax(logits / T) (T=1 for greedy)."""
    z = logits.float()
    T = float(params.temperature)
    if T <= 0:
        logp = torch.log_softmax(z, dim=-1)
        tok = z.argmax(dim=-1)
        return tok, logp.gather(-1, tok[:, None]).squeeze(-1)
    if T != 1.0:
        z = z / T
    logp = torch.log_softmax(z, dim=-1)
    top_k, top_p = int(params.top_k or 0), float(params.top_p)
    V = z.shape[-1]
    if top_k <= 0 and top_p >= 1.0:
        tok = torch.multinomial(logp.exp(), 1, generator=gen).squeeze(-1)
    else:
        k = min(top_k, V) if top_k > 0 else min(_TOP_P_CANDIDATES, V)
        cand_lp, cand_idx = logp.topk(k, dim=-1)  # sorted descending
        if top_k > 0:
            cand_lp = cand_lp - torch.logsumexp(cand_lp, dim=-1, keepdim=True)
        cand_p = cand_lp.exp()
        if top_p < 1.0:
            cum = cand_p.cumsum(-1)
            if top_k <= 0 and k < V and bool((cum[:, -1] < top_p).any()):
                cand_lp, cand_idx = logp.sort(dim=-1, descending=True)
                cand_p = cand_lp.exp()
                cum = cand_p.cumsum(-1)
            # keep a token when the mass strictly before it is < top_p (>= 1 token kept)
            cand_p = cand_p.masked_fill((cum - cand_p) >= top_p, 0.0)
        choice = torch.multinomial(cand_p, 1, generator=gen)
        tok = cand_idx.gather(-1, choice).squeeze(-1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)


# ---------------------------------------------------------------------- KV cache


def _make_cache(config, capacity: int) -> DynamicCache:
    """A DynamicCache whose plain full-attention layers write into preallocated buffers.

    transformers' DynamicLayer concatenates the whole cache every step (O(T^2) copying;
    ~25% of decode time for SmolLM2 at batch 64 on CPU). Layers of other kinds (sliding
    window, linear attention) keep their own implementation.
    """
    cache = DynamicCache(config=config)
    if cache.layers:
        cache.layers = [
            PreallocLayer(capacity) if type(layer) is DynamicLayer else layer
            for layer in cache.layers
        ]
    else:  # layers created lazily
        cache.layer_class_to_replicate = functools.partial(PreallocLayer, capacity)
    return cache


class PreallocLayer(DynamicLayer):
    """A DynamicLayer over [B, H, capacity, D] buffers (grown by doubling when full).

    ``keys``/``values`` are views of the filled part, so appending a token writes one
    slot instead of copying the whole cache."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = max(int(capacity), 1)
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        self._len = 0

    def _refresh(self) -> None:
        self.keys = self._k[:, :, : self._len]
        self.values = self._v[:, :, : self._len]

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        if self._k is None:
            cap = max(self.capacity, n)
            self._k = key_states.new_empty((*key_states.shape[:2], cap, key_states.shape[3]))
            self._v = value_states.new_empty((*value_states.shape[:2], cap, value_states.shape[3]))
        elif self._len + n > self._k.shape[2]:
            cap = max(2 * self._k.shape[2], self._len + n)
            k, v = self._k, self._v
            self._k = k.new_empty((*k.shape[:2], cap, k.shape[3]))
            self._v = v.new_empty((*v.shape[:2], cap, v.shape[3]))
            self._k[:, :, : self._len] = k[:, :, : self._len]
            self._v[:, :, : self._len] = v[:, :, : self._len]
        self._k[:, :, self._len : self._len + n] = key_states
        self._v[:, :, self._len : self._len + n] = value_states
        self._len += n
        self._refresh()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._len

    def reset(self) -> None:
        self._k = self._v = None
        self._len = 0
        super().reset()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if tokens_to_remove == 0 or self._k is None:
            return
        self._len = max(self._len + tokens_to_remove, 0)
        self._refresh()

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self._k is not None:
            self._k = self._k.repeat_interleave(repeats, dim=0)
            self._v = self._v.repeat_interleave(repeats, dim=0)
            self._refresh()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._k is not None:
            self._k = self._k[indices]
            self._v = self._v[indices]
            self._refresh()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)
