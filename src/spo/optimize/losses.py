"""Policy-gradient losses on per-token tensors (pure tensor code, CleanRL style).

Shapes: every per-token tensor is [B, T] (any shape works as long as they agree);
`mask` is bool or 0/1, and a token "counts" where mask != 0. Tokens that do not count
never influence a value or a gradient (they are selected away with `torch.where`, so
even inf/NaN there is harmless).

Notation: pi = pi_theta (current policy), pi_old (sampling policy), pi_ref (frozen
reference), ratio_t = pi(y_t | s_t) / pi_old(y_t | s_t), A_t = token advantage.

    PPO-clip  L_t = max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - eps_low, 1 + eps_high))
    k3 KL     k3_t = exp(ref_t - pi_t) - (ref_t - pi_t) - 1   >= 0   (Schulman 2020;
              unbiased estimator of KL(pi || pi_ref) under samples from pi)
    SPO mask  count token t only if pi_old(y_t | s_t) < rho

Choices (documented for the user guide):
* `masked_var` / `masked_whiten` default to the POPULATION variance (divide by the
  number of counted tokens n); `unbiased=True` divides by n - 1. Over thousands of
  tokens the two agree; population is defined for n = 1.
* `masked_whiten` returns 0 on non-counted tokens. `shift_mean=False` re-adds the
  original mean after whitening (TRL / VinePPO convention): only the spread is rescaled.
* Empty masks give a mean of 0 (not NaN).
* `ppo_clip_loss` detaches `old_logprobs` and `advantages`; log-ratios are clamped to
  [-20, 20] before `exp` so a broken token cannot produce inf.
* `clip_frac` counts tokens whose clipped branch is active, i.e. the max picks the
  clipped term strictly (those tokens get no gradient) -- the TRL / verl definition.
* `approx_kl` is the k3 estimate of KL(pi_old || pi) = mean(ratio - 1 - log ratio).
"""

from __future__ import annotations

import math
from typing import Callable, Literal

import torch
from torch import Tensor

__all__ = [
    "AGG_MODES",
    "aggregate_loss",
    "clipped_value_loss",
    "kl_k3",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "whiten_across",
    "policy_loss",
    "ppo_clip_loss",
    "probability_mask",
]

AggMode = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"]
AGG_MODES: tuple[str, ...] = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")

_LOG_RATIO_CLAMP = 20.0


def _zeros_like(values: Tensor) -> Tensor:
    return torch.zeros((), dtype=values.dtype, device=values.device)


def masked_sum(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of `values` over counted tokens (along `dim`, or all of them)."""
    picked = torch.where(mask.bool(), values, _zeros_like(values))
    return picked.sum() if dim is None else picked.sum(dim)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `values` over counted tokens (along `dim`, or all). No counted token -> 0."""
    m = mask.bool()
    count = m.sum() if dim is None else m.sum(dim)
    return masked_sum(values, m, dim) / count.clamp_min(1).to(values.dtype)


def masked_var(values: Tensor, mask: Tensor, unbiased: bool = False) -> Tensor:
    """Variance over all counted tokens: population (/n) by default, /(n-1) if `unbiased`.

    Returns 0 when there are too few counted tokens (n = 0, or n = 1 with `unbiased`)."""
    m = mask.bool()
    n = m.sum()
    mean = masked_mean(values, m)
    sq = masked_sum((values - mean) ** 2, m)
    dof = n - 1 if unbiased else n
    return torch.where(dof > 0, sq / dof.clamp_min(1).to(values.dtype), _zeros_like(values))


def masked_whiten(
    values: Tensor,
    mask: Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    unbiased: bool = False,
) -> Tensor:
    """(values - mean) / sqrt(var + eps) with mean and var over counted tokens only.

    `shift_mean=False` adds the mean back (scale only). Non-counted tokens are set to 0.
    For whitening over a global batch, call it once on the whole batch before splitting
    into micro-batches."""
    m = mask.bool()
    mean = masked_mean(values, m)
    var = masked_var(values, m, unbiased=unbiased)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(m, whitened, _zeros_like(whitened))


def whiten_across(values: Tensor, mask: Tensor, total: Callable[[float], float] = float) -> Tensor:
    """`masked_whiten` over the counted tokens of several processes' batches: `total` sums
    a number over the processes (the identity for one). Population variance; 0 where the
    mask is 0."""
    m = mask.to(values.dtype)
    s, s2, n = (total(float(x)) for x in ((values * m).sum(), (values * values * m).sum(), m.sum()))
    mean = s / max(n, 1.0)
    var = max(s2 / max(n, 1.0) - mean * mean, 0.0)
    return (values - mean) / math.sqrt(var + 1e-8) * m


def _log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """log ratio_t = log pi(y_t) - log pi_old(y_t), clamped; non-counted tokens -> 0 (ratio 1)."""
    log_ratio = torch.where(mask.bool(), logprobs - old_logprobs.detach(), _zeros_like(logprobs))
    return log_ratio.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)


def ppo_clip_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps_low: float = 0.2,
    clip_eps_high: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token PPO clipped surrogate (unreduced), 0 on non-counted tokens.

    Returns (loss [same shape as logprobs], stats) with stats as detached 0-d tensors:
      "clip_frac"  share of counted tokens where clipping is active (no gradient),
      "approx_kl"  k3 estimate of KL(pi_old || pi) = mean(ratio - 1 - log ratio),
      "ratio_mean" mean ratio over counted tokens.
    `clip_eps_high=None` means symmetric clipping (clip_eps_low on both sides)."""
    if clip_eps_high is None:
        clip_eps_high = clip_eps_low
    m = mask.bool()
    log_ratio = _log_ratio(logprobs, old_logprobs, m)
    ratio = torch.exp(log_ratio)
    adv = advantages.detach()
    unclipped = -adv * ratio  # -A_t * ratio_t
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
    loss = torch.where(m, torch.maximum(unclipped, clipped), _zeros_like(unclipped))
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).to(ratio.dtype), m),
            "approx_kl": masked_mean(ratio - 1.0 - log_ratio, m),
            "ratio_mean": masked_mean(ratio, m),
        }
    return loss, stats


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-token k3 estimator of KL(pi || pi_ref): exp(ref - pi) - (ref - pi) - 1 >= 0.

    `ref_logprobs` is detached (frozen reference). ref - pi is clamped to [-20, 20]; the
    value is computed as expm1(d) - d for accuracy near 0. With `mask`, non-counted tokens
    are 0 and cannot leak inf/NaN into gradients."""
    d = ref_logprobs.detach() - logprobs
    if mask is not None:
        d = torch.where(mask.bool(), d, _zeros_like(d))
    d = d.clamp(-_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    return torch.expm1(d) - d


def aggregate_loss(
    per_token_loss: Tensor,
    mask: Tensor,
    mode: AggMode = "token_mean",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """Reduce a [B, T] per-token loss over counted tokens to a scalar.

    token_mean:          sum_{b,t} L[b,t] * m[b,t] / N, N = number of counted tokens.
    seq_mean_token_mean: mean over sequences of each sequence's token mean
                         (sum_b [sum_t L m / sum_t m] / N, N = number of sequences with at
                         least one counted token; sequences without any are skipped).
    seq_mean_token_sum:  sum_{b,t} L[b,t] * m[b,t] / N with a CONSTANT N (Dr.GRPO), by
                         default B * T (mean over sequences of token sums / T). Pass
                         N = global_num_sequences * max_new_tokens for a truly constant one.

    `normalizer` replaces N. Passing the GLOBAL N (all micro-batches of the optimizer step,
    all processes) makes the sum of the per-micro-batch results exactly the global value,
    so accumulating gradients with plain `loss.backward()` gives the global-batch gradient.
    If gradients are also averaged over W processes (DDP), pass N / W instead; do not let
    the framework divide by the number of accumulation steps as well.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"unknown loss aggregation mode {mode!r}; known: {', '.join(AGG_MODES)}")
    if per_token_loss.dim() != 2 or per_token_loss.shape != mask.shape:
        raise ValueError(
            f"per_token_loss and mask must both be [B, T]; got {tuple(per_token_loss.shape)} "
            f"and {tuple(mask.shape)}"
        )
    m = mask.bool()
    if mode == "seq_mean_token_mean":
        count = m.sum(-1)
        seq_sum = masked_sum(per_token_loss, m, dim=-1)
        seq_loss = seq_sum / count.clamp_min(1).to(per_token_loss.dtype)
        total = seq_loss.sum()  # sequences without tokens contribute 0
        default_n = (count > 0).sum()
    else:
        total = masked_sum(per_token_loss, m)
        default_n = m.sum() if mode == "token_mean" else torch.tensor(m.numel())
    n = default_n.clamp_min(1) if normalizer is None else normalizer
    if isinstance(n, Tensor):
        n = n.to(device=total.device, dtype=total.dtype)
    return total / n


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor,
                       clip: float = 0.2) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token PPO value loss (unreduced), 0 on non-counted tokens:

        V_clip = V_old + clip(V - V_old, -clip, +clip)
        L_t    = 1/2 max((V - G)^2, (V_clip - G)^2)

    so the critic gains nothing by moving a value further than `clip` from the one the
    advantages used. Stats (detached, over counted tokens): "value_clip_frac" (share where
    the clipped error is the larger) and "value_error" (mean |V - G|)."""
    m = mask.bool()
    old = old_values.detach()
    target = returns.detach()
    clipped = old + (values - old).clamp(-clip, clip)
    unclipped_err = (values - target) ** 2
    clipped_err = (clipped - target) ** 2
    loss = torch.where(m, 0.5 * torch.maximum(unclipped_err, clipped_err), _zeros_like(values))
    with torch.no_grad():
        stats = {
            "value_clip_frac": masked_mean((clipped_err > unclipped_err).to(values.dtype), m),
            "value_error": masked_mean((values - target).abs(), m),
        }
    return loss, stats


def probability_mask(old_logprobs: Tensor, response_mask: Tensor, rho: float | None) -> Tensor:
    """SPO probability mask (bool, same shape): response tokens with pi_old(y_t) < rho.

    Compared in log space, `old_logprobs < log(rho)` in the log-probs' dtype, so a token
    whose probability is exactly rho is excluded. rho None or >= 1 keeps every response
    token (including p == 1); rho <= 0 keeps none."""
    keep = response_mask.bool()
    if rho is None or rho >= 1.0:
        return keep
    if rho <= 0.0:
        return torch.zeros_like(keep)
    return keep & (old_logprobs < math.log(rho))


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_logprobs: Tensor | None = None,
    kl_coef: float = 0.0,
    clip_eps_low: float = 0.2,
    clip_eps_high: float | None = None,
    agg_mode: AggMode = "token_mean",
    normalizer: float | Tensor | None = None,
    kl_aggregation: str = "token_mean",
    sequences: float | None = None,
    kl_importance_correction: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """PPO-clip + kl_coef * k3(pi || ref), over the counted tokens of `mask`.

    kl_aggregation "token_mean" (spo's default) adds the KL per token before aggregating:
        L = aggregate( max(-A ratio, -A clip(ratio)) + kl_coef * k3 , mask, agg_mode, normalizer )
    "sequence_sum" (the reference's) adds each sequence's summed KL, averaged over sequences:
        L = aggregate( max(-A ratio, -A clip(ratio)), mask, agg_mode, normalizer )
            + kl_coef * sum_{b,t} k3[b,t] m[b,t] / S
    with S = `sequences` (pass the global count of the mini-batch, as for `normalizer`;
    default: the rows of this batch), so it weighs about (tokens per sequence) times more
    than the token mean. `kl_importance_correction` multiplies k3 by ratio = pi/pi_old (with
    its gradient; TRL's `use_bias_correction_kl`): the tokens come from pi_old, the KL is
    of pi.

    `mask` is the counted-token mask (response mask, possibly AND the probability mask).
    Returns (loss scalar with grad, stats). Stats are Python floats: "loss" (the returned
    value), "pg_loss" (token mean of the PPO part over counted tokens, whatever the
    aggregation: comparable across modes and micro-batches), "kl" (token mean of k3 over
    counted tokens, the corrected one with `kl_importance_correction`; 0 without ref), "clip_frac", "approx_kl", "ratio_mean" (token means
    over counted tokens, see `ppo_clip_loss`) and "num_tokens" (counted tokens)."""
    if kl_coef != 0.0 and ref_logprobs is None:
        raise ValueError("kl_coef != 0 needs ref_logprobs")
    pg, pg_stats = ppo_clip_loss(
        logprobs, old_logprobs, advantages, mask, clip_eps_low, clip_eps_high
    )
    if kl_aggregation not in ("token_mean", "sequence_sum"):
        raise ValueError(f"unknown KL aggregation {kl_aggregation!r}; known: token_mean, sequence_sum")
    per_token = pg
    kl_mean, kl_term = 0.0, None
    if ref_logprobs is not None:
        kl = kl_k3(logprobs, ref_logprobs, mask)
        if kl_importance_correction:
            kl = kl * torch.exp(_log_ratio(logprobs, old_logprobs, mask))
        kl_mean = float(masked_mean(kl.detach(), mask))
        if kl_coef != 0.0 and kl_aggregation == "token_mean":
            per_token = per_token + kl_coef * kl
        elif kl_coef != 0.0:
            kl_term = kl_coef * masked_sum(kl, mask) / (sequences if sequences is not None else kl.shape[0])
    loss = aggregate_loss(per_token, mask, agg_mode, normalizer)
    if kl_term is not None:
        loss = loss + kl_term
    stats = {
        "loss": float(loss.detach()),
        "pg_loss": float(masked_mean(pg.detach(), mask)),
        "kl": kl_mean,
        **{k: float(v) for k, v in pg_stats.items()},
        "num_tokens": float(mask.bool().sum()),
    }
    return loss, stats
