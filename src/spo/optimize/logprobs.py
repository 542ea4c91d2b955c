"""Teacher-forced log-probs of responses under a model: the policy loss's input.

:func:`compute_logprobs` scores (context, response) pairs with ONE forward per
micro-batch (contexts left-padded, responses right-padded, attention mask and position
ids, and only the response positions through the LM head). The trainer calls it with
gradients for the loss and without for old / reference log-probs. Its log-probs match
the ones the HF engine returns while sampling (to ~1e-5 in float32).

With ``packing=True`` the pairs of a micro-batch that share prefixes (a group's prompt, a
tree's path) are scored as one packed sequence with each shared token once
(`spo.optimize.packing`); models that cannot take its 4-D mask fall back to padded rows,
with the reason logged once. Both layouts give the same numbers (to ~1e-6 in float32).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from spo.optimize.packing import packed_scores, packing_unsupported, plan_micro_batches, warn_fallback

__all__ = ["TokenLogprobs", "compute_logprobs", "compute_values", "pack_pairs"]


@dataclass
class TokenLogprobs:
    """Per-token scores of responses, right-padded to the longest response.

    logprobs[b, t] = log softmax(logits / T)[response_b[t]] for t < len(response_b),
    0 elsewhere; mask[b, t] marks real tokens; entropy (when asked) is the entropy of
    softmax(logits / T) at the same positions. Tensors keep the autograd graph when
    computed with gradients enabled.
    """

    logprobs: torch.Tensor
    mask: torch.Tensor
    entropy: torch.Tensor | None = None
    lengths: list[int] = field(default_factory=list)

    def to_lists(self) -> list[list[float]]:
        lp = self.logprobs.detach().float().cpu()
        return [lp[b, :n].tolist() for b, n in enumerate(self.lengths)]



def compute_logprobs(
    model,
    contexts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    temperature: float = 1.0,
    micro_batch_size: int | None = None,
    *,
    return_entropy: bool = False,
    pad_token_id: int = 0,
    packing: bool = False,
    micro_batch_tokens: int | None = None,
) -> TokenLogprobs:
    """Teacher-forced log-probs of ``responses[b]`` given ``contexts[b]``.

    One forward per micro-batch (``micro_batch_size=None``: the whole batch at once):
    contexts left-padded, responses right-padded, attention mask + position ids, and
    the LM head applied to the response positions only (``logits_to_keep``). Uses
    softmax(logits / temperature) (temperature <= 0 counts as 1), matching the engine.

    Grad mode and train/eval mode are the caller's: wrap in ``torch.no_grad()`` and
    call ``model.eval()`` for old/reference log-probs; call it with gradients for the
    policy loss (each micro-batch keeps its graph until backward, so for training
    pass one micro-batch per call). Micro-batches are formed after sorting by length
    (less padding); results come back in input order, padded to the longest response.

    ``packing=True``: micro-batches keep samples that share prefixes together (at most
    ``micro_batch_tokens`` packed tokens each when given, else ``micro_batch_size``
    samples) and each is one packed forward (`spo.optimize.packing`); padded rows when the model cannot.
    """
    if len(contexts) != len(responses):
        raise ValueError("contexts and responses differ in length")
    B = len(contexts)
    device = next(model.parameters()).device
    T = float(temperature) if temperature and temperature > 0 else 1.0
    lengths = [len(r) for r in responses]
    R = max(lengths, default=0)
    if B == 0 or R == 0:
        z = torch.zeros((B, R), device=device)
        return TokenLogprobs(z, z.bool(), z.clone() if return_entropy else None, lengths)
    if packing and (reason := packing_unsupported(model)) is not None:
        warn_fallback(reason)
        packing = False
    if packing:
        batches = plan_micro_batches([list(c) + list(r) for c, r in zip(contexts, responses)],
                                     None if micro_batch_tokens else micro_batch_size, micro_batch_tokens)
    else:
        mb = B if not micro_batch_size else int(micro_batch_size)
        order = sorted(range(B), key=lambda b: (len(contexts[b]) + lengths[b], lengths[b]))
        batches = [order[s : s + mb] for s in range(0, B, mb)]
    parts_lp, parts_ent, parts_idx = [], [], []
    for idx in batches:
        ctx, resp = [contexts[b] for b in idx], [responses[b] for b in idx]
        if packing:
            lp, ent = packed_scores(model, ctx, resp, T, return_entropy=return_entropy)
        else:
            lp, ent = _score_batch(model, ctx, resp, T, return_entropy, pad_token_id, device)
        parts_lp.append(F.pad(lp, (0, R - lp.shape[1])))
        if ent is not None:
            parts_ent.append(F.pad(ent, (0, R - ent.shape[1])))
        parts_idx += idx
    inv = torch.empty(B, dtype=torch.long)
    inv[torch.tensor(parts_idx)] = torch.arange(B)
    inv = inv.to(device)
    logprobs = torch.cat(parts_lp, 0)[inv]
    entropy = torch.cat(parts_ent, 0)[inv] if return_entropy else None
    mask = torch.arange(R, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
    return TokenLogprobs(logprobs, mask, entropy, lengths)


def pack_pairs(contexts, responses, pad_id: int, device):
    """One forward's input for (context, response) pairs: contexts left-padded to Lc,
    responses right-padded to R, attention mask and position ids (so a padded pair sees
    exactly what it would alone). Returns (ids, mask, pos, targets [b, R], valid [b, R], Lc, R);
    the model's output at position Lc - 1 + t belongs to the state before response token t."""
    b = len(contexts)
    Lc = max(len(c) for c in contexts)
    R = max(len(r) for r in responses)
    ids = torch.full((b, Lc + R), pad_id, dtype=torch.long)
    mask = torch.zeros((b, Lc + R), dtype=torch.long)
    tgt = torch.full((b, R), pad_id, dtype=torch.long)
    for k, (c, r) in enumerate(zip(contexts, responses)):
        if len(c) == 0:
            raise ValueError("empty context: give at least one token (e.g. BOS)")
        ids[k, Lc - len(c) : Lc] = torch.as_tensor(list(c), dtype=torch.long)
        mask[k, Lc - len(c) : Lc + len(r)] = 1
        if len(r):
            ids[k, Lc : Lc + len(r)] = torch.as_tensor(list(r), dtype=torch.long)
            tgt[k, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
    ids, mask, tgt = ids.to(device), mask.to(device), tgt.to(device)
    pos = (mask.cumsum(-1) - 1).clamp_(min=0)
    valid = torch.arange(R, device=device)[None, :] < torch.tensor([len(r) for r in responses], device=device)[:, None]
    return ids, mask, pos, tgt, valid, Lc, R


def _score_batch(model, contexts, responses, T, return_entropy, pad_id, device):
    ids, mask, pos, tgt, valid, Lc, R = pack_pairs(contexts, responses, pad_id, device)
    # logits for positions Lc-1 .. Lc+R-1; the first R predict the response tokens
    logits = model(
        input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=R + 1
    ).logits[:, :R, :]
    z = logits.float()
    if T != 1.0:
        z = z / T
    lse = torch.logsumexp(z, dim=-1)
    lp = z.gather(-1, tgt[..., None]).squeeze(-1) - lse
    lp = lp.masked_fill(~valid, 0.0)
    ent = None
    if return_entropy:
        p = torch.softmax(z, dim=-1)
        ent = (lse - (p * z).sum(-1)).masked_fill(~valid, 0.0)
    return lp, ent


def compute_values(critic, contexts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
                   pad_token_id: int = 0, *, packing: bool = False) -> torch.Tensor:
    """A value model's V_t [B, R] for every response state (the context and the response
    tokens before t), 0 on padding, in one forward (pass one micro-batch per call when
    training). `critic` returns one number per position in `.logits[..., 0]` (a
    `*ForTokenClassification` model with one label). Grad mode is the caller's.
    ``packing=True``: one packed forward (shared prefixes once) where the model allows."""
    if packing and (reason := packing_unsupported(critic)) is not None:
        warn_fallback(reason)
        packing = False
    if packing:
        return packed_scores(critic, contexts, responses, values=True)[0]
    device = next(critic.parameters()).device
    ids, mask, pos, _, valid, Lc, R = pack_pairs(contexts, responses, pad_token_id, device)
    out = critic(input_ids=ids, attention_mask=mask, position_ids=pos).logits[..., 0]
    return out[:, Lc - 1 : Lc - 1 + R].float().masked_fill(~valid, 0.0)
