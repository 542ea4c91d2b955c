"""Losses: hand-computed PPO-clip cases, k3, whitening, aggregation, probability mask."""

from __future__ import annotations

import math

import pytest
import torch

from spo.optimize.losses import (
    aggregate_loss,
    kl_k3,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss,
    ppo_clip_loss,
    probability_mask,
)

LN2 = math.log(2.0)


def _k3_ratio(r: float) -> float:
    return r - 1.0 - math.log(r)


# ----------------------------------------------------------------------------- PPO clip


def _ppo_case(ratios, advs, old=math.log(0.5)):
    old_lp = torch.full((1, len(ratios)), old)
    lp = (old_lp + torch.log(torch.tensor([ratios]))).clone().requires_grad_(True)
    return lp, old_lp, torch.tensor([advs])


def test_ppo_clip_inside_and_outside_range_both_signs():
    # eps = 0.2, clip range [0.8, 1.2]
    ratios = [1.1, 1.5, 0.5, 0.5, 1.5, 1.1, 7.0]
    advs = [1.0, 1.0, 1.0, -1.0, -1.0, -2.0, 100.0]
    lp, old_lp, adv = _ppo_case(ratios, advs)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    loss, stats = ppo_clip_loss(lp, old_lp, adv, mask)
    # A>0 r in range: -1.1 | A>0 r>1.2: -1.2 (clipped) | A>0 r<0.8: -0.5 (unclipped, min wins)
    # A<0 r<0.8: 0.8 (clipped) | A<0 r>1.2: 1.5 (unclipped) | A=-2 r in range: 2.2 | masked: 0
    expected = [-1.1, -1.2, -0.5, 0.8, 1.5, 2.2, 0.0]
    torch.testing.assert_close(loss, torch.tensor([expected]), atol=1e-5, rtol=0)
    # d loss / d logprob = -A * ratio where unclipped, 0 where clipped or masked
    loss.sum().backward()
    expected_grad = [-1.1, 0.0, -0.5, 0.0, 1.5, 2.2, 0.0]
    torch.testing.assert_close(lp.grad, torch.tensor([expected_grad]), atol=1e-5, rtol=0)
    assert stats["clip_frac"].item() == pytest.approx(2 / 6)
    counted = ratios[:6]
    assert stats["ratio_mean"].item() == pytest.approx(sum(counted) / 6, abs=1e-6)
    assert stats["approx_kl"].item() == pytest.approx(
        sum(_k3_ratio(r) for r in counted) / 6, abs=1e-6
    )
    assert not stats["clip_frac"].requires_grad


def test_ppo_clip_asymmetric_clip_higher():
    # eps_low 0.2, eps_high 0.28: A>0 r=1.25 is inside [0.8, 1.28]; A<0 r=0.75 clipped at 0.8
    lp, old_lp, adv = _ppo_case([1.25, 0.75, 1.3], [1.0, -1.0, 1.0])
    mask = torch.ones(1, 3)
    loss, stats = ppo_clip_loss(lp, old_lp, adv, mask, clip_eps_low=0.2, clip_eps_high=0.28)
    torch.testing.assert_close(loss, torch.tensor([[-1.25, 0.8, -1.28]]), atol=1e-5, rtol=0)
    assert stats["clip_frac"].item() == pytest.approx(2 / 3)
    sym, _ = ppo_clip_loss(lp, old_lp, adv, mask, clip_eps_low=0.2)
    torch.testing.assert_close(sym, torch.tensor([[-1.2, 0.8, -1.2]]), atol=1e-5, rtol=0)


def test_ppo_masked_garbage_is_harmless():
    lp = torch.tensor([[-1.0, float("nan"), float("-inf")]], requires_grad=True)
    old = torch.tensor([[-1.0, -2.0, float("-inf")]])
    adv = torch.tensor([[1.0, 5.0, 5.0]])
    loss, stats = ppo_clip_loss(lp, old, adv, torch.tensor([[1, 0, 0]]))
    assert loss.tolist() == [[-1.0, 0.0, 0.0]]
    loss.sum().backward()
    assert torch.isfinite(lp.grad).all()
    assert lp.grad.tolist() == [[-1.0, 0.0, 0.0]]


# ----------------------------------------------------------------------------- k3 KL


def test_kl_k3_known_values_and_gradient():
    pi = torch.tensor([math.log(0.5), math.log(0.25), math.log(0.3)], requires_grad=True)
    ref = torch.tensor([math.log(0.25), math.log(0.5), math.log(0.3)])
    k3 = kl_k3(pi, ref)
    # d = ref - pi: -ln2 -> 0.5 + ln2 - 1 ; +ln2 -> 2 - ln2 - 1 ; 0 -> 0
    torch.testing.assert_close(k3, torch.tensor([LN2 - 0.5, 1.0 - LN2, 0.0]), atol=1e-6, rtol=0)
    k3.sum().backward()  # d k3 / d pi = 1 - exp(d)
    torch.testing.assert_close(pi.grad, torch.tensor([0.5, -1.0, 0.0]), atol=1e-6, rtol=0)


def test_kl_k3_non_negative_and_mask():
    g = torch.Generator().manual_seed(0)
    pi = -torch.rand(1000, generator=g) * 10
    ref = -torch.rand(1000, generator=g) * 10
    assert (kl_k3(pi, ref) >= 0).all()
    out = kl_k3(torch.tensor([0.0, float("nan")]), torch.tensor([0.0, 0.0]), torch.tensor([1, 0]))
    assert out.tolist() == [0.0, 0.0]


# ----------------------------------------------------------------------------- masked stats


def test_masked_mean_var_whiten_ignore_masked_tokens():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 6.0, float("nan")]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    # counted: 1, 2, 3, 6 -> mean 3, squared deviations 4 + 1 + 0 + 9 = 14
    assert masked_mean(values, mask).item() == pytest.approx(3.0)
    assert masked_var(values, mask).item() == pytest.approx(14 / 4)
    assert masked_var(values, mask, unbiased=True).item() == pytest.approx(14 / 3)
    w = masked_whiten(values, mask, eps=0.0)
    s = math.sqrt(3.5)
    expected = torch.tensor([[-2 / s, -1 / s, 0.0], [0.0, 3 / s, 0.0]])
    torch.testing.assert_close(w, expected)
    w_unb = masked_whiten(values, mask, eps=0.0, unbiased=True)
    torch.testing.assert_close(w_unb[1, 1], torch.tensor(3 / math.sqrt(14 / 3)))
    w_noshift = masked_whiten(values, mask, shift_mean=False, eps=0.0)
    expected_noshift = torch.tensor([[3 - 2 / s, 3 - 1 / s, 0.0], [3.0, 3 + 3 / s, 0.0]])
    torch.testing.assert_close(w_noshift, expected_noshift)


def test_masked_mean_per_row_and_empty():
    values = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    mask = torch.tensor([[1, 1], [0, 0]])
    assert masked_mean(values, mask, dim=-1).tolist() == [2.0, 0.0]
    assert masked_mean(values, torch.zeros(2, 2)).item() == 0.0
    assert masked_var(values, torch.tensor([[1, 0], [0, 0]]), unbiased=True).item() == 0.0


# ----------------------------------------------------------------------------- aggregation

AGG_LOSS = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0]])
AGG_MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])


def test_aggregate_modes_hand_values():
    assert aggregate_loss(AGG_LOSS, AGG_MASK, "token_mean").item() == pytest.approx(10 / 4)
    # row means 2 and 4; the empty third row is skipped
    assert aggregate_loss(AGG_LOSS, AGG_MASK, "seq_mean_token_mean").item() == pytest.approx(3.0)
    # constant normalizer B * T = 12 by default
    assert aggregate_loss(AGG_LOSS, AGG_MASK, "seq_mean_token_sum").item() == pytest.approx(10 / 12)
    out = aggregate_loss(AGG_LOSS, AGG_MASK, "seq_mean_token_sum", normalizer=20)
    assert out.item() == pytest.approx(0.5)
    out = aggregate_loss(AGG_LOSS, AGG_MASK, "token_mean", normalizer=torch.tensor(8))
    assert out.item() == pytest.approx(1.25)
    with pytest.raises(ValueError, match="token_mean"):
        aggregate_loss(AGG_LOSS, AGG_MASK, "sum")


def _micro_batch_grads(mode, normalizer_fn):
    """Gradients of the full-batch loss and of the sum of 2 uneven micro-batch losses."""
    g = torch.Generator().manual_seed(1)
    b, t = 5, 6
    logits = torch.randn(b, t, generator=g)
    old = torch.log_softmax(torch.randn(b, t, 3, generator=g), -1)[..., 0]
    adv = torch.randn(b, t, generator=g)
    mask = (torch.rand(b, t, generator=g) > 0.3).int()
    mask[0] = 1  # rows with very different token counts
    mask[1, 1:] = 0

    def loss_of(lp, rows, normalizer):
        per_tok, _ = ppo_clip_loss(lp[rows], old[rows], adv[rows], mask[rows])
        return aggregate_loss(per_tok, mask[rows], mode, normalizer)

    full_lp = logits.clone().requires_grad_(True)
    loss_of(full_lp, slice(0, b), None).backward()

    micro_lp = logits.clone().requires_grad_(True)
    norm = normalizer_fn(mask)
    for rows in (slice(0, 2), slice(2, b)):
        loss_of(micro_lp, rows, norm).backward()
    return full_lp.grad, micro_lp.grad, mask


def test_token_mean_global_normalizer_matches_full_batch_gradient():
    full, micro, mask = _micro_batch_grads("token_mean", lambda m: m.sum())
    assert full.abs().sum() > 0
    torch.testing.assert_close(micro, full)
    # without the global normalizer each micro-batch averages over its own tokens: differs
    naive, _, _ = _micro_batch_grads("token_mean", lambda m: None)
    assert not torch.allclose(naive / 2, full, atol=1e-4)


def test_seq_modes_global_normalizer_match_full_batch_gradient():
    full, micro, _ = _micro_batch_grads("seq_mean_token_mean", lambda m: (m.sum(-1) > 0).sum())
    torch.testing.assert_close(micro, full)
    full, micro, _ = _micro_batch_grads("seq_mean_token_sum", lambda m: m.numel())
    torch.testing.assert_close(micro, full)


# ----------------------------------------------------------------------------- probability mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_probability_mask_edges(dtype):
    probs = [0.5, 0.3, 1.0, 0.95, 0.1]
    old = torch.tensor([[math.log(p) for p in probs]], dtype=dtype)
    resp = torch.tensor([[1, 1, 1, 1, 0]])
    # p exactly rho is excluded; the padded last token is never kept
    assert probability_mask(old, resp, 0.5).tolist() == [[False, True, False, False, False]]
    assert probability_mask(old, resp, 0.9).tolist() == [[True, True, False, False, False]]
    # rho >= 1 or None keeps every response token, even p == 1
    for rho in (1.0, 1.5, None):
        assert probability_mask(old, resp, rho).tolist() == [[True, True, True, True, False]]
    assert probability_mask(old, resp, 0.0).tolist() == [[False] * 5]
    assert probability_mask(old, resp, 0.5).dtype == torch.bool


# ----------------------------------------------------------------------------- entropy


# ----------------------------------------------------------------------------- policy_loss


def test_policy_loss_combines_ppo_and_k3():
    old = torch.tensor([[math.log(0.5), math.log(0.25), float("nan")]])
    lp = old.clone().nan_to_num(0.0).requires_grad_(True)  # ratio 1 on counted tokens
    ref = lp.detach() + LN2  # d = ref - pi = ln 2 -> k3 = 1 - ln 2
    adv = torch.tensor([[1.0, -2.0, 3.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, stats = policy_loss(lp, old, adv, mask, ref_logprobs=ref, kl_coef=0.1)
    # PPO part at ratio 1: -A -> [-1, 2], mean 0.5; plus 0.1 * (1 - ln 2)
    assert loss.item() == pytest.approx(0.5 + 0.1 * (1 - LN2), abs=1e-6)
    loss.backward()
    # per token: -A + 0.1 * (1 - e^{ln 2}) = -A - 0.1, divided by 2 counted tokens
    torch.testing.assert_close(lp.grad, torch.tensor([[-0.55, 0.95, 0.0]]), atol=1e-6, rtol=0)
    keys = {"loss", "pg_loss", "kl", "clip_frac", "approx_kl", "ratio_mean", "num_tokens"}
    assert set(stats) == keys
    assert all(isinstance(v, float) for v in stats.values())
    assert stats["pg_loss"] == pytest.approx(0.5)
    assert stats["kl"] == pytest.approx(1 - LN2, abs=1e-6)
    assert stats["clip_frac"] == 0.0 and stats["num_tokens"] == 2.0
    assert stats["ratio_mean"] == pytest.approx(1.0)


def test_policy_loss_without_ref_and_errors():
    lp = torch.zeros(1, 2, requires_grad=True)
    loss, stats = policy_loss(lp, torch.zeros(1, 2), torch.tensor([[1.0, 3.0]]), torch.ones(1, 2))
    assert loss.item() == pytest.approx(-2.0)
    assert stats["kl"] == 0.0
    with pytest.raises(ValueError):
        policy_loss(lp, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), kl_coef=0.1)


def test_kl_sequence_sum_by_hand():
    """The reference's KL: each sequence's summed k3, averaged over sequences, added to the
    aggregated PPO loss (here 0: zero advantages)."""
    lp = torch.zeros(2, 3, requires_grad=True)
    ref = torch.tensor([[LN2, LN2, 0.0], [LN2, 0.0, 0.0]])  # k3 = 1 - ln 2 where ref - pi = ln 2, else 0
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    adv = torch.zeros(2, 3)
    k = 1 - LN2
    loss, stats = policy_loss(lp, lp.detach(), adv, mask, ref_logprobs=ref, kl_coef=0.5,
                              kl_aggregation="sequence_sum")
    # sequence sums: 2k and k; mean over 2 sequences: 1.5k; times 0.5
    assert loss.item() == pytest.approx(0.5 * 1.5 * k, abs=1e-6)
    loss_global, _ = policy_loss(lp, lp.detach(), adv, mask, ref_logprobs=ref, kl_coef=0.5,
                                 kl_aggregation="sequence_sum", sequences=6)
    assert loss_global.item() == pytest.approx(0.5 * 3 * k / 6, abs=1e-6)  # a global count of 6 sequences
    token_mean, _ = policy_loss(lp, lp.detach(), adv, mask, ref_logprobs=ref, kl_coef=0.5)
    assert token_mean.item() == pytest.approx(0.5 * 3 * k / 4, abs=1e-6)  # 3k over 4 counted tokens
    assert stats["kl"] == pytest.approx(3 * k / 4, abs=1e-6)  # the logged KL is a token mean either way
    with pytest.raises(ValueError, match="KL aggregation"):
        policy_loss(lp, lp.detach(), adv, mask, ref_logprobs=ref, kl_coef=0.5, kl_aggregation="mean")
