"""Shared-prefix packing: score samples that share prefixes with each prefix token once.

A GRPO group's G responses share their prompt; an SPO-tree edge's context is the prompt
plus its parent's path, shared with its siblings and every descendant edge. Scoring each
(context, response) pair as its own row runs those shared tokens through the model once
per pair, forward and backward. Here the pairs of a micro-batch are laid out as ONE
sequence, a prefix trie of their tokens:

    tokens     every distinct prefix once (a node per token; a node's parent comes first)
    positions  a node's depth in its own sequence (what the token's position is alone)
    mask       (1, 1, N, N) additive float mask: node i attends to node j iff j is i or one
               of its ancestors (0 there, the dtype's lowest value elsewhere)

so each token's hidden state equals the one it has in its own padded row, and one
forward gives every pair's log-probs (entropies, a critic's values). The backward runs
through each shared prefix once. Only the nodes that predict a response token go
through the LM head (`logits_to_keep` as a tensor of positions).

Works where the model takes a 4-D float mask with explicit position ids: the Llama and
Qwen2 families under SDPA or eager attention (tested), plain, under LoRA, DDP or FSDP.
Anything else (flash-attention, other architectures) falls back to padded rows
(`spo.optimize.logprobs.compute_logprobs` does that, logging the reason once).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "PACKABLE_MODEL_TYPES",
    "PackedRow",
    "group_by_prefix",
    "pack_rows",
    "packed_scores",
    "packing_unsupported",
    "plan_micro_batches",
]

log = logging.getLogger("spo.packing")

PACKABLE_MODEL_TYPES = ("llama", "qwen2")
"""Model families whose attention takes the 4-D float mask exactly (tests/test_packing.py)."""
PACKABLE_ATTENTION = ("sdpa", "eager")


def _inner_model(model):
    """The transformers model under DDP/FSDP/accelerate wrappers and PEFT."""
    seen = 0
    while hasattr(model, "module") and seen < 8:  # DDP, accelerate wrappers
        model, seen = model.module, seen + 1
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    while hasattr(model, "_fsdp_wrapped_module") and seen < 16:
        model, seen = model._fsdp_wrapped_module, seen + 1
    return model


def packing_unsupported(model) -> str | None:
    """Why `model` cannot be scored packed (None when it can)."""
    config = getattr(_inner_model(model), "config", None)
    if config is None:
        return f"{type(model).__name__} has no transformers config"
    model_type = getattr(config, "model_type", None)
    if model_type not in PACKABLE_MODEL_TYPES:
        return f"model type {model_type!r} is not one tested with a 4-D attention mask ({', '.join(PACKABLE_MODEL_TYPES)})"
    if getattr(config, "use_sliding_window", False):
        return "sliding-window attention is not expressed by the packed mask"
    attention = getattr(config, "_attn_implementation", None) or "eager"
    if attention not in PACKABLE_ATTENTION:
        return f"attention implementation {attention!r} takes no 4-D mask (packing needs sdpa or eager)"
    return None


_warned: set[str] = set()


def warn_fallback(reason: str) -> None:
    """Log once per reason that padded rows are used instead of packing."""
    if reason not in _warned:
        _warned.add(reason)
        log.warning("shared-prefix packing off, scoring padded rows: %s", reason)


@dataclass
class PackedRow:
    """One packed sequence: `tokens[n]` at position `positions[n]`, `parents[n]` (-1 for a
    root); `paths[k]` are sample k's node indices (context then response)."""

    tokens: list[int]
    positions: list[int]
    parents: list[int]
    paths: list[list[int]]

    def __len__(self) -> int:
        return len(self.tokens)

    def ancestor_mask(self) -> torch.Tensor:
        """[N, N] bool: node i may attend to node j (j is i or an ancestor of i)."""
        n = len(self.tokens)
        allowed = torch.zeros((n, n), dtype=torch.bool)
        for i, p in enumerate(self.parents):
            if p >= 0:
                allowed[i, : p + 1] = allowed[p, : p + 1]
            allowed[i, i] = True
        return allowed


def pack_rows(sequences: Sequence[Sequence[int]]) -> PackedRow:
    """The prefix trie of `sequences` as one row (nodes in insertion order, so a parent
    always precedes its children and the mask is lower-triangular)."""
    children: dict[tuple[int, int], int] = {}
    tokens: list[int] = []
    positions: list[int] = []
    parents: list[int] = []
    paths: list[list[int]] = []
    for seq in sequences:
        node, path = -1, []
        for depth, tok in enumerate(seq):
            key = (node, int(tok))
            nxt = children.get(key)
            if nxt is None:
                nxt = len(tokens)
                children[key] = nxt
                tokens.append(int(tok))
                positions.append(depth)
                parents.append(node)
            path.append(nxt)
            node = nxt
        paths.append(path)
    return PackedRow(tokens, positions, parents, paths)


def _shared(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def group_by_prefix(sequences: Sequence[Sequence[int]]) -> list[int]:
    """Indices of `sequences` in lexicographic order of their tokens: samples sharing a
    prefix end up next to each other (a group's responses, a tree's edges)."""
    return sorted(range(len(sequences)), key=lambda i: list(sequences[i]))


def plan_micro_batches(sequences: Sequence[Sequence[int]], max_rows: int | None = None,
                       max_tokens: int | None = None) -> list[list[int]]:
    """Split samples (their full token sequences) into micro-batches that keep shared
    prefixes together: in lexicographic order, a micro-batch closes when it has `max_rows`
    samples or when the next sample would take its packed token count (each shared prefix
    counted once) past `max_tokens` (a sample longer than that gets its own)."""
    order = group_by_prefix(sequences)
    out: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for i in order:
        seq = sequences[i]
        cost = len(seq) - (max(_shared(seq, sequences[j]) for j in current[-1:]) if current else 0)
        full = (max_rows is not None and len(current) >= max_rows) or (
            max_tokens is not None and current and tokens + cost > max_tokens)
        if full:
            out.append(current)
            current, tokens, cost = [], 0, len(seq)
        current.append(i)
        tokens += cost
    if current:
        out.append(current)
    return out


def _row_inputs(row: PackedRow, dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
    allowed = row.ancestor_mask().to(device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)
    return {
        "input_ids": torch.tensor([row.tokens], dtype=torch.long, device=device),
        "position_ids": torch.tensor([row.positions], dtype=torch.long, device=device),
        "attention_mask": mask[None, None],
    }


def _predicting_nodes(row: PackedRow, context_lengths: Sequence[int], response_lengths: Sequence[int]):
    """For every sample, the nodes whose output belongs to the state before each response
    token (the node of its context's last token, then of each response token but the last)."""
    out = []
    for path, c, r in zip(row.paths, context_lengths, response_lengths):
        if r and c == 0:
            raise ValueError("empty context: give at least one token (e.g. BOS)")
        out.append(path[c - 1 : c - 1 + r])
    return out


def packed_scores(model, contexts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                  temperature: float = 1.0, *, return_entropy: bool = False, values: bool = False):
    """Score (context, response) pairs in ONE packed forward of `model`.

    Returns (logprobs [B, R], entropy [B, R] or None), right-padded with 0 to the longest
    response, as `compute_logprobs`' padded rows give them; with `values=True`, `model` is
    a value model (`.logits[..., 0]` per position) and the result is its V [B, R] of the
    state before each response token. Grad and train/eval mode are the caller's."""
    B = len(contexts)
    lengths = [len(r) for r in responses]
    R = max(lengths, default=0)
    param = next(model.parameters())
    device = param.device
    row = pack_rows([list(c) + list(r) for c, r in zip(contexts, responses)])
    nodes = _predicting_nodes(row, [len(c) for c in contexts], lengths)
    keep = sorted({n for ns in nodes for n in ns})
    slot = {n: k for k, n in enumerate(keep)}
    # [B, R] index into the kept positions (0 on padding, masked below)
    index = torch.zeros((B, max(R, 1)), dtype=torch.long)
    valid = torch.zeros((B, max(R, 1)), dtype=torch.bool)
    targets = torch.zeros((B, max(R, 1)), dtype=torch.long)
    for b, ns in enumerate(nodes):
        if ns:
            index[b, : len(ns)] = torch.tensor([slot[n] for n in ns])
            valid[b, : len(ns)] = True
            targets[b, : len(ns)] = torch.as_tensor(list(responses[b]), dtype=torch.long)
    index, valid, targets = index[:, :R].to(device), valid[:, :R].to(device), targets[:, :R].to(device)
    if B == 0 or R == 0:
        z = torch.zeros((B, R), device=device)
        return z, (z.clone() if return_entropy else None)
    dtype = param.dtype if param.dtype.is_floating_point else torch.float32
    inputs = _row_inputs(row, dtype, device)
    if values:
        out = model(**inputs).logits[0, :, 0]
        return out[torch.tensor(keep, device=device)].float()[index].masked_fill(~valid, 0.0), None
    logits = model(**inputs, use_cache=False, logits_to_keep=torch.tensor(keep, device=device)).logits[0]
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    lse = torch.logsumexp(z, dim=-1)  # [K]
    # each sample's target at its predicting node, picked from [K, V] without a [B, R, V] copy
    flat = index.reshape(-1)
    lp = (z[flat, targets.reshape(-1)] - lse[flat]).reshape(B, R)
    lp = lp.masked_fill(~valid, 0.0)
    ent = None
    if return_entropy:
        p = torch.softmax(z, dim=-1)
        node_ent = lse - (p * z).sum(-1)  # [K]
        ent = node_ent[flat].reshape(B, R).masked_fill(~valid, 0.0)
    return lp, ent
