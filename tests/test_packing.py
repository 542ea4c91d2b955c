"""Shared-prefix packing (spo.optimize.packing): a packed forward gives the log-probs,
entropies, critic values and loss gradients of padded rows, on a GRPO group, a 3-level
SPO tree and recycled continuations, for tiny random Llama and Qwen2 models under SDPA
and eager attention, plain and with LoRA; unsupported models fall back to padded rows."""

from __future__ import annotations

import logging
import random
from types import SimpleNamespace

import pytest
import torch

from spo.optimize.logprobs import compute_logprobs, compute_values
from spo.optimize.losses import policy_loss
from spo.optimize.packing import pack_rows, packing_unsupported, plan_micro_batches
from spo.optimize.update import micro_batches

VOCAB = 97
ARCH = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256)


def tiny(family: str, attention: str, head: str = "lm", seed: int = 0):
    import transformers as tf

    config_cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config}[family]
    model_cls = getattr(tf, {"llama": "Llama", "qwen2": "Qwen2"}[family]
                        + ("ForCausalLM" if head == "lm" else "ForTokenClassification"))
    config = config_cls(**ARCH, attn_implementation=attention, tie_word_embeddings=False,
                        **({"num_labels": 1} if head != "lm" else {}))
    torch.manual_seed(seed)
    return model_cls(config).eval()


def _tokens(rng, n):
    return [rng.randrange(3, VOCAB) for _ in range(n)]


def group_case(rng):
    """A GRPO group: one prompt, 5 responses of different lengths (and a second prompt)."""
    prompt, other = [1] + _tokens(rng, 12), [1] + _tokens(rng, 7)
    responses = [_tokens(rng, n) for n in (6, 3, 9, 1, 6)] + [_tokens(rng, 4), _tokens(rng, 5)]
    return [prompt] * 5 + [other] * 2, responses


def tree_case(rng):
    """An SPO tree with 3 levels, branching 2-2-2: every edge parent -> child as a sample
    with context = prompt + the parent's path, response = the child's segment."""
    prompt = [1] + _tokens(rng, 10)
    contexts, responses = [], []
    frontier = [[]]
    for level, seg in enumerate((4, 3, 5)):
        nxt = []
        for path in frontier:
            for _ in range(2):
                segment = _tokens(rng, seg + level)  # leaves of different lengths
                contexts.append(prompt + path)
                responses.append(segment)
                nxt.append(path + segment)
        frontier = nxt
    return contexts, responses


def recycled_case(rng):
    """Recycled Monte-Carlo continuations: several states along one response, each with
    3 continuations, and the response itself."""
    prompt = [1] + _tokens(rng, 9)
    response = _tokens(rng, 12)
    contexts, responses = [prompt], [response]
    for cut in (0, 4, 8):
        for _ in range(3):
            contexts.append(prompt + response[:cut])
            responses.append(_tokens(rng, 5))
    return contexts, responses


CASES = {"group": group_case, "tree": tree_case, "recycled": recycled_case}


def test_the_trie_holds_each_prefix_once_and_each_token_sees_its_ancestors():
    row = pack_rows([[1, 2, 3], [1, 2, 4, 5], [1, 6]])
    assert row.tokens == [1, 2, 3, 4, 5, 6]
    assert row.positions == [0, 1, 2, 2, 3, 1]
    assert row.paths == [[0, 1, 2], [0, 1, 3, 4], [0, 5]]
    allowed = row.ancestor_mask()
    expected = {0: {0}, 1: {0, 1}, 2: {0, 1, 2}, 3: {0, 1, 3}, 4: {0, 1, 3, 4}, 5: {0, 5}}
    for i, ancestors in expected.items():
        assert set(torch.nonzero(allowed[i]).flatten().tolist()) == ancestors


def test_micro_batches_keep_shared_prefixes_together_within_the_token_budget():
    a, b = [1, 2, 3, 4, 5, 6], [1, 9, 9, 9, 9, 9]
    seqs = [a + [7], b + [7], a + [8], b + [8], a + [9]]
    plan = plan_micro_batches(seqs, max_rows=3)
    assert plan == [[0, 2, 4], [1, 3]]
    # packed tokens: a's group costs 7 + 1 + 1 = 9; with a budget of 8 it splits
    plan = plan_micro_batches(seqs, max_tokens=8)
    assert plan == [[0, 2], [4], [1, 3]]
    assert sorted(i for part in plan_micro_batches(seqs, max_tokens=1) for i in part) == list(range(5))
    # the update's split: rows of the mini-batch, micro_batch_size rows or micro_batch_tokens
    samples = [SimpleNamespace(prompt_ids=s[:6], response_ids=s[6:]) for s in seqs]
    algorithm = SimpleNamespace(micro_batch_size=3, micro_batch_tokens=None, whiten="none")
    assert micro_batches(samples, [4, 3, 2, 1, 0], algorithm, packing=True) == [[0, 2, 4], [1, 3]]
    assert micro_batches(samples, [4, 3, 2, 1, 0], algorithm, packing=False) == [[4, 3, 2], [1, 0]]
    algorithm.whiten = "micro_batch"  # its whitening groups are the rows as they come
    assert micro_batches(samples, [4, 3, 2, 1, 0], algorithm, packing=True) == [[4, 3, 2], [1, 0]]
    algorithm.whiten, algorithm.micro_batch_tokens = "none", 8
    assert micro_batches(samples, [0, 1, 2, 3, 4], algorithm, packing=True) == [[0, 2], [4], [1, 3]]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_packed_logprobs_and_loss_gradients_equal_padded_rows(family, attention, case):
    contexts, responses = CASES[case](random.Random(3))
    model = tiny(family, attention)
    assert packing_unsupported(model) is None
    grads, scores = {}, {}
    for packing in (False, True):
        model.zero_grad()
        scored = compute_logprobs(model, contexts, responses, 0.7, return_entropy=True, packing=packing)
        mask = scored.mask
        old = (scored.logprobs.detach() + 0.05 * torch.randn(scored.logprobs.shape,
                                                             generator=torch.Generator().manual_seed(0))) * mask
        adv = torch.linspace(-1, 1, mask.numel()).reshape(mask.shape) * mask
        ref = scored.logprobs.detach() * 1.1
        loss, _ = policy_loss(scored.logprobs, old, adv, mask, ref_logprobs=ref, kl_coef=0.1,
                              agg_mode="token_mean", normalizer=float(mask.sum()))
        loss.backward()
        scores[packing] = scored
        grads[packing] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert torch.equal(scores[True].mask, scores[False].mask)
    assert (scores[True].logprobs - scores[False].logprobs).abs().max() < 1e-5
    assert (scores[True].entropy - scores[False].entropy).abs().max() < 1e-5
    assert (grads[True] - grads[False]).norm() / grads[False].norm() < 1e-4


def test_micro_batches_by_tokens_give_the_same_logprobs():
    contexts, responses = tree_case(random.Random(5))
    model = tiny("llama", "sdpa")
    whole = compute_logprobs(model, contexts, responses, packing=False).logprobs
    split = compute_logprobs(model, contexts, responses, packing=True, micro_batch_tokens=20).logprobs
    assert (whole - split).abs().max() < 1e-5


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_packed_critic_values_and_their_gradients_equal_padded_rows(family):
    contexts, responses = group_case(random.Random(4))
    critic = tiny(family, "sdpa", head="value")
    out = {}
    for packing in (False, True):
        critic.zero_grad()
        values = compute_values(critic, contexts, responses, packing=packing)
        (values ** 2).sum().backward()
        out[packing] = values.detach(), torch.cat([p.grad.flatten() for p in critic.parameters()])
    assert (out[True][0] - out[False][0]).abs().max() < 1e-5
    assert (out[True][1] - out[False][1]).norm() / out[False][1].norm() < 1e-4


def test_lora_gradients_equal_padded_rows():
    from peft import LoraConfig, get_peft_model

    contexts, responses = tree_case(random.Random(6))
    model = get_peft_model(tiny("qwen2", "sdpa"), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                             init_lora_weights=False))
    assert packing_unsupported(model) is None
    out = {}
    for packing in (False, True):
        model.zero_grad()
        scored = compute_logprobs(model, contexts, responses, packing=packing)
        (scored.logprobs * torch.linspace(-1, 1, scored.mask.shape[1])).sum().backward()
        grads = [p.grad.flatten() for n, p in model.named_parameters() if "lora_" in n]
        assert grads
        out[packing] = scored.logprobs.detach(), torch.cat(grads)
    assert (out[True][0] - out[False][0]).abs().max() < 1e-5
    assert (out[True][1] - out[False][1]).norm() / out[False][1].norm() < 1e-4


def test_a_model_that_cannot_take_the_mask_falls_back_to_padded_rows_with_a_logged_reason(caplog):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=64)).eval()
    reason = packing_unsupported(model)
    assert reason is not None and "gpt2" in reason
    contexts, responses = group_case(random.Random(7))
    with caplog.at_level(logging.WARNING, logger="spo.packing"):
        packed = compute_logprobs(model, contexts, responses, packing=True)
    assert "packing off" in caplog.text and "gpt2" in caplog.text
    padded = compute_logprobs(model, contexts, responses, packing=False)
    assert torch.equal(packed.logprobs, padded.logprobs)


def test_an_attention_without_4d_masks_is_refused():
    model = tiny("llama", "sdpa")
    model.config._attn_implementation_internal = "flash_attention_2"  # what from_pretrained(...) would set
    assert "flash_attention_2" in (packing_unsupported(model) or "")
    sliding = tiny("qwen2", "sdpa")
    sliding.config.use_sliding_window = True
    assert "sliding" in (packing_unsupported(sliding) or "")


def test_a_run_with_micro_batches_by_token_count_matches_the_golden_run(tmp_path):
    # the smoke preset's recorded run (tests/golden) with micro-batches of whole groups by
    # packed token count instead of 4 rows: the same optimizer steps, the same numbers
    import json

    from golden_runs import GOLDEN_DIR, run_preset
    from test_golden_runs import assert_same

    expected = json.loads((GOLDEN_DIR / "smoke.json").read_text())
    actual = run_preset("smoke", tmp_path / "run", ("algorithm.micro_batch_tokens=160",))
    assert_same(expected["metrics"], actual["metrics"], "metrics")
    assert_same(expected["episodes"], actual["episodes"], "episodes")
