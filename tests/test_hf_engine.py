"""HFEngine (our KV-cached decode loop) and compute_logprobs, on the tiny random Llama."""

from __future__ import annotations

import pytest
import torch

from spo.sample.engine import Rollout, SamplingParams
from spo.optimize.logprobs import TokenLogprobs, compute_logprobs
from spo.sample.hf_engine import (
    HFEngine,
    PreallocLayer,
    _sample,
    default_stop_token_ids,
)

GREEDY = SamplingParams(max_new_tokens=20, temperature=0.0)


@pytest.fixture(scope="module")
def engine(tiny_model, tokenizer):
    # no stop tokens: a random model's continuations then always run to the limit,
    # which makes lengths predictable; EOS is tested with explicit stop ids below.
    return HFEngine(tiny_model, tokenizer, stop_token_ids=[], batch_size=64)


@pytest.fixture(scope="module")
def contexts(chat_prompts, tokenizer):
    # uneven lengths (left padding is exercised), plus a raw 1-token context
    return chat_prompts + [tokenizer.encode("7")]


def _ids(result):
    return [[r.response_ids for r in group] for group in result]


def test_shapes_and_types(engine, contexts):
    out = engine.generate(contexts, SamplingParams(max_new_tokens=5, temperature=1.0, seed=0), n=3)
    assert len(out) == len(contexts)
    for ctx, group in zip(contexts, out):
        assert len(group) == 3
        for r in group:
            assert isinstance(r, Rollout)
            assert r.context_ids == ctx
            assert len(r.response_ids) == len(r.logprobs) == 5
            assert r.finish_reason == "length" and r.truncated
            assert all(isinstance(t, int) for t in r.response_ids)
            assert all(lp <= 0.0 for lp in r.logprobs)


def test_default_stop_tokens(tiny_model, tokenizer):
    ids = default_stop_token_ids(tokenizer, tiny_model)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in ids
    assert tokenizer.eos_token_id in ids
    eng = HFEngine(tiny_model, tokenizer)
    assert eng.stop_token_ids == ids
    assert eng.max_context == tiny_model.config.max_position_embeddings


def test_greedy_prefix_exactness(engine, contexts):
    """greedy(ctx) = y  =>  greedy(ctx + y[:j]) = y[j:], for several j, batched."""
    full = engine.generate(contexts, GREEDY)
    ys = [g[0].response_ids for g in full]
    assert any(len(set(y)) > 3 for y in ys), "tiny model should not be degenerate"
    for j in (1, 4, 11, 19):
        prefixed = [c + y[:j] for c, y in zip(contexts, ys)]
        out = engine.generate(
            prefixed, SamplingParams(max_new_tokens=GREEDY.max_new_tokens - j, temperature=0)
        )
        for y, g in zip(ys, out):
            assert g[0].response_ids == y[j:], j


def test_greedy_matches_model_generate(engine, tiny_model, contexts):
    out = engine.generate(contexts[:2], GREEDY)
    for ctx, g in zip(contexts[:2], out):
        ref = tiny_model.generate(
            torch.tensor([ctx]),
            max_new_tokens=GREEDY.max_new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        assert g[0].response_ids == ref[0, len(ctx) :].tolist()


def test_padding_invariance(engine, contexts):
    """A short context alone == the same context batched with longer ones."""
    batched = engine.generate(contexts, GREEDY)
    short = min(range(len(contexts)), key=lambda i: len(contexts[i]))
    alone = engine.generate([contexts[short]], GREEDY)[0][0]
    assert alone.response_ids == batched[short][0].response_ids
    assert alone.logprobs == pytest.approx(batched[short][0].logprobs, abs=1e-4)


def test_generate_logprobs_match_teacher_forcing(engine, tiny_model, contexts):
    params = SamplingParams(max_new_tokens=12, temperature=0.7, top_p=0.9, seed=1)
    out = engine.generate(contexts, params, n=2)
    flat = [r for g in out for r in g]
    with torch.no_grad():
        tl = compute_logprobs(
            tiny_model,
            [r.context_ids for r in flat],
            [r.response_ids for r in flat],
            temperature=0.7,
            micro_batch_size=3,
            return_entropy=True,
        )
    assert isinstance(tl, TokenLogprobs)
    for r, lps in zip(flat, tl.to_lists()):
        assert lps == pytest.approx(r.logprobs, abs=1e-4)
    assert tl.mask.sum().item() == sum(len(r.response_ids) for r in flat)
    ent = tl.entropy[tl.mask]
    assert (ent > 0).all() and (ent <= torch.log(torch.tensor(49152.0)) + 1e-3).all()


def test_greedy_logprobs_use_temperature_one(engine, tiny_model, contexts):
    out = engine.generate(contexts[:2], SamplingParams(max_new_tokens=6, temperature=0))
    flat = [g[0] for g in out]
    with torch.no_grad():
        tl = compute_logprobs(
            tiny_model, [r.context_ids for r in flat], [r.response_ids for r in flat], 1.0
        )
    for r, lps in zip(flat, tl.to_lists()):
        assert lps == pytest.approx(r.logprobs, abs=1e-4)


def test_compute_logprobs_micro_batches_and_grad(make_tiny_model, contexts):
    model = make_tiny_model(seed=3)
    resp = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15]]
    ctxs = contexts[:4]
    with torch.no_grad():
        whole = compute_logprobs(model, ctxs, resp)
        parts = compute_logprobs(model, ctxs, resp, micro_batch_size=1)
    torch.testing.assert_close(whole.logprobs, parts.logprobs, atol=1e-5, rtol=0)
    assert whole.logprobs.shape == (4, 5)
    assert whole.mask.tolist()[1] == [True, False, False, False, False]
    assert whole.logprobs[1, 1:].abs().sum() == 0
    # gradients flow (the trainer calls it with grad enabled)
    model.train()
    tl = compute_logprobs(model, ctxs, resp)
    (tl.logprobs.sum()).backward()
    assert model.model.embed_tokens.weight.grad is not None


def test_compute_logprobs_single_vs_alone(tiny_model, contexts):
    """Padding in compute_logprobs does not change the scores."""
    resp = [3, 4, 5, 6]
    with torch.no_grad():
        batch = compute_logprobs(tiny_model, contexts, [resp] * len(contexts)).to_lists()
        for i, c in enumerate(contexts):
            alone = compute_logprobs(tiny_model, [c], [resp]).to_lists()[0]
            assert alone == pytest.approx(batch[i], abs=1e-5)


def test_seeded_sampling_reproducible(engine, contexts):
    p = SamplingParams(max_new_tokens=8, temperature=1.0, top_k=50, seed=123)
    a = engine.generate(contexts, p, n=4)
    b = engine.generate(contexts, p, n=4)
    assert _ids(a) == _ids(b)
    c = engine.generate(contexts, SamplingParams(max_new_tokens=8, top_k=50, seed=7), n=4)
    assert _ids(a) != _ids(c)
    # the n samples of one context differ from each other
    assert len({tuple(r.response_ids) for r in a[0]}) > 1


def test_each_distinct_context_prefilled_once(engine, contexts):
    ctxs = [contexts[0], contexts[1], contexts[0]]
    out = engine.generate(ctxs, SamplingParams(max_new_tokens=3, seed=0), n=5)
    assert engine.last_stats.prefilled_contexts == 2
    assert engine.last_stats.new_tokens == 3 * 5 * 3
    assert [len(g) for g in out] == [5, 5, 5]
    assert all(r.context_ids == ctxs[i] for i, g in enumerate(out) for r in g)


def test_small_batch_size_splits_groups(tiny_model, tokenizer, contexts):
    """Results do not depend on batch_size for greedy decoding."""
    small = HFEngine(tiny_model, tokenizer, stop_token_ids=[], batch_size=3)
    big = HFEngine(tiny_model, tokenizer, stop_token_ids=[], batch_size=64)
    p = SamplingParams(max_new_tokens=6, temperature=0)
    assert _ids(small.generate(contexts, p, n=4)) == _ids(big.generate(contexts, p, n=4))
    assert small.last_stats.prefilled_contexts > len(contexts)  # n=4 > 3 splits


def test_eos_stops_and_is_kept(tiny_model, tokenizer, contexts):
    plain = HFEngine(tiny_model, tokenizer, stop_token_ids=[])
    ys = [g[0].response_ids for g in plain.generate(contexts, GREEDY)]
    stop = ys[0][5]
    eng = HFEngine(tiny_model, tokenizer, stop_token_ids=[stop])
    out = eng.generate(contexts, GREEDY)
    for y, g in zip(ys, out):
        r = g[0]
        if stop in y:
            k = y.index(stop)
            assert r.response_ids == y[: k + 1]
            assert r.finish_reason == "eos" and not r.truncated
            assert len(r.logprobs) == k + 1
        else:
            assert r.response_ids == y and r.finish_reason == "length"
    assert out[0][0].finish_reason == "eos"


def test_finished_rows_dropped_others_unaffected(tiny_model, tokenizer, contexts):
    """Rows ending early (dropped from the batch) leave the other rows' outputs intact."""
    plain = HFEngine(tiny_model, tokenizer, stop_token_ids=[])
    ys = [g[0].response_ids for g in plain.generate(contexts, GREEDY)]
    stop = ys[0][2]
    eng = HFEngine(tiny_model, tokenizer, stop_token_ids=[stop])
    out = eng.generate(contexts, GREEDY)
    for y, g in zip(ys, out):
        k = y.index(stop) + 1 if stop in y else len(y)
        assert g[0].response_ids == y[:k]


def test_max_new_tokens_and_max_context(tiny_model, tokenizer, contexts):
    eng = HFEngine(tiny_model, tokenizer, stop_token_ids=[])
    out = eng.generate(contexts, SamplingParams(max_new_tokens=3, seed=0))
    assert all(len(g[0].response_ids) == 3 and g[0].finish_reason == "length" for g in out)
    out = eng.generate(contexts, SamplingParams(max_new_tokens=0))
    assert all(g[0].response_ids == [] and g[0].finish_reason == "length" for g in out)

    limit = len(contexts[0]) + 4
    capped = HFEngine(tiny_model, tokenizer, stop_token_ids=[], max_context=limit)
    out = capped.generate(contexts, SamplingParams(max_new_tokens=50, seed=0))
    for c, g in zip(contexts, out):
        r = g[0]
        assert len(r.response_ids) == max(0, min(50, limit - len(c)))
        assert r.finish_reason == "length"
        assert len(c) + len(r.response_ids) <= max(limit, len(c))


def test_prealloc_cache_matches_dynamic_cache(tiny_model, tokenizer, contexts):
    fast = HFEngine(tiny_model, tokenizer, stop_token_ids=[], prealloc_cache=True)
    slow = HFEngine(tiny_model, tokenizer, stop_token_ids=[], prealloc_cache=False)
    for p in (GREEDY, SamplingParams(max_new_tokens=10, temperature=0.8, top_p=0.95, seed=4)):
        a, b = fast.generate(contexts, p, n=2), slow.generate(contexts, p, n=2)
        assert _ids(a) == _ids(b)
        for ga, gb in zip(a, b):
            for ra, rb in zip(ga, gb):
                assert ra.logprobs == pytest.approx(rb.logprobs, abs=1e-5)


def test_prealloc_layer_grows_and_selects():
    layer = PreallocLayer(capacity=2)
    k = torch.arange(2 * 1 * 3 * 2, dtype=torch.float32).reshape(2, 1, 3, 2)
    keys, values = layer.update(k, -k)
    assert torch.equal(keys, k) and torch.equal(values, -k) and layer.get_seq_length() == 3
    k2 = torch.full((2, 1, 1, 2), 7.0)
    keys, _ = layer.update(k2, k2)
    assert keys.shape == (2, 1, 4, 2) and torch.equal(keys[:, :, :3], k)
    assert torch.equal(keys[:, :, 3:], k2)
    layer.batch_select_indices(torch.tensor([1, 1, 0]))
    assert layer.keys.shape[0] == 3 and torch.equal(layer.keys[2, :, :3], k[0])
    layer.batch_repeat_interleave(2)
    assert layer.keys.shape == (6, 1, 4, 2)
    layer.crop(-1)
    assert layer.get_seq_length() == 3 and layer.keys.shape[2] == 3


def test_top_k_one_and_tiny_top_p_are_greedy(engine, contexts):
    greedy = engine.generate(contexts, SamplingParams(max_new_tokens=8, temperature=0))
    k1 = engine.generate(contexts, SamplingParams(max_new_tokens=8, top_k=1, seed=5))
    p0 = engine.generate(contexts, SamplingParams(max_new_tokens=8, top_p=1e-6, seed=5))
    assert _ids(k1) == _ids(greedy) == _ids(p0)
    # logprobs stay those of the untruncated T=1 distribution
    for a, b in zip(greedy, k1):
        assert a[0].logprobs == pytest.approx(b[0].logprobs, abs=1e-5)


@pytest.mark.parametrize("peaked", [True, False])
def test_sample_top_p_support_and_frequencies(peaked):
    """_sample draws only from the nucleus, with renormalised probabilities."""
    V = 1000
    logits = torch.full((1, V), -30.0 if peaked else 0.0)
    logits[0, :4] = torch.tensor([3.0, 2.0, 1.0, 0.0]) + (0 if peaked else 10.0)
    # peaked: the 4 tokens hold ~all mass (candidate path); flat: lots of tail mass,
    # nucleus not inside the first candidates when top_p is large (full-sort path)
    top_p = 0.8 if peaked else 0.999
    probs = torch.softmax(logits[0], -1)
    sorted_p, order = probs.sort(descending=True)
    keep = (sorted_p.cumsum(0) - sorted_p) < top_p
    nucleus = set(order[keep].tolist())
    g = torch.Generator().manual_seed(0)
    p = SamplingParams(temperature=1.0, top_p=top_p)
    draws = [t for _ in range(4) for t in _sample(logits.expand(256, V), p, g)[0].tolist()]
    assert set(draws) <= nucleus
    if peaked:
        assert nucleus == {0, 1}
        frac0 = draws.count(0) / len(draws)
        expect = (probs[0] / (probs[0] + probs[1])).item()
        assert abs(frac0 - expect) < 0.05


def test_sample_logprob_is_untruncated():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    g = torch.Generator().manual_seed(0)
    tok, lp = _sample(logits, SamplingParams(temperature=0.5, top_k=2), g)
    assert tok.item() in (0, 1)
    full = torch.log_softmax(logits / 0.5, -1)[0, tok.item()]
    assert lp.item() == pytest.approx(full.item(), abs=1e-6)


def test_training_mode_restored_and_no_grad_state(make_tiny_model, tokenizer, contexts):
    model = make_tiny_model(seed=1)
    model.train()
    eng = HFEngine(model, tokenizer, stop_token_ids=[])
    eng.generate(contexts[:1], SamplingParams(max_new_tokens=2, seed=0))
    assert model.training
    model.eval()
    eng.generate(contexts[:1], SamplingParams(max_new_tokens=2, seed=0))
    assert not model.training
    eng.sync_weights()  # no-op
    # generation under inference_mode leaves nothing that breaks a later backward
    model.train()
    tl = compute_logprobs(model, contexts[:2], [[5, 6], [7]])
    tl.logprobs.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_empty_context_rejected(engine):
    with pytest.raises(ValueError):
        engine.generate([[]], GREEDY)
    with pytest.raises(ValueError):
        engine.generate([[1]], GREEDY, n=0)


def test_engine_with_lora_model(tiny_model_dir, tokenizer, contexts):
    from spo.models import load_policy

    base = load_policy(tiny_model_dir, dtype="float32")
    lora = load_policy(tiny_model_dir, dtype="float32", lora={"r": 4}, seed=0)
    p = SamplingParams(max_new_tokens=6, temperature=0)
    a = HFEngine(base, tokenizer, stop_token_ids=[]).generate(contexts, p)
    b = HFEngine(lora, tokenizer, stop_token_ids=[]).generate(contexts, p)
    assert _ids(a) == _ids(b)  # LoRA B starts at zero
    assert lora.training
    flat = [g[0] for g in b]
    with torch.no_grad():
        tl = compute_logprobs(lora, [r.context_ids for r in flat], [r.response_ids for r in flat])
    for r, lps in zip(flat, tl.to_lists()):
        assert lps == pytest.approx(r.logprobs, abs=1e-4)


@pytest.mark.slow
def test_smollm2_engine_sane(tokenizer):
    """Real weights: the engine answers a chat prompt and agrees with teacher forcing."""
    from spo.models import load_policy

    model = load_policy(dtype="float32")
    ctx = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True, tokenize=True
    )
    ctx = list(ctx if isinstance(ctx, list) else ctx["input_ids"])
    eng = HFEngine(model, tokenizer)
    out = eng.generate([ctx], SamplingParams(max_new_tokens=24, temperature=0))[0][0]
    ref = model.generate(torch.tensor([ctx]), max_new_tokens=24, do_sample=False)
    ref_ids = ref[0, len(ctx) :].tolist()
    assert out.response_ids == ref_ids[: len(out.response_ids)]
    assert "4" in tokenizer.decode(out.response_ids)
    params = SamplingParams(max_new_tokens=24, temperature=0.7, seed=0)
    sampled = eng.generate([ctx], params, n=2)[0]
    with torch.no_grad():
        tl = compute_logprobs(
            model, [ctx] * 2, [r.response_ids for r in sampled], temperature=0.7
        ).to_lists()
    for r, lps in zip(sampled, tl):
        assert lps == pytest.approx(r.logprobs, abs=1e-3)


def test_share_prefill_off_gives_the_same_greedy_output(tiny_model, tokenizer, chat_prompts):
    """Re-encoding every sample's context (the benchmark's baseline) changes nothing but speed."""
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    shared = HFEngine(tiny_model, tokenizer).generate(chat_prompts[:2], params, n=3)
    separate = HFEngine(tiny_model, tokenizer, share_prefill=False).generate(chat_prompts[:2], params, n=3)
    assert [[r.response_ids for r in g] for g in shared] == [[r.response_ids for r in g] for g in separate]
