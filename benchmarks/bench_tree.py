"""SPO-tree cost: segment samples per generated token against SPO-chain on the same
prompts, and tree sampling throughput with prefix reuse against re-encoding.

    python benchmarks/bench_tree.py                    # cpu-spo-tree vs cpu-spo-chain
    python benchmarks/bench_tree.py --tree-config smoke-spo-tree --chain-config smoke-spo-chain

Part 1 takes iteration 0's prompts (the two presets must pick the same ones) from the
same initial weights and does each method's sampling and value estimation, no update:
  * spo_tree: sample the trees, score the leaves, values bottom-up; every edge is a
    segment sample with its own advantage;
  * spo_chain: G responses per prompt, partition, N MC continuations per boundary;
    every segment of every response is a segment sample.
It counts segment samples (all, and those with a nonzero advantage, the ones that carry
a learning signal) per generated token (tree nodes; responses plus MC continuations).
Part 2 samples the same trees twice with the same seed: each parent's prefix encoded
once for all its children (spo's default), and re-encoded for every child.
Ratios are of runs in this process.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from spo.config import load_config  # noqa: E402
from spo.estimate.segment import segment_advantages  # noqa: E402
from spo.presets import resolve_preset  # noqa: E402
from spo.sample.tree import sample_trees  # noqa: E402
from spo.seeds import SALT_SAMPLE  # noqa: E402
from spo.train.loop import Trainer  # noqa: E402
from spo.train.progress import Progress  # noqa: E402


def _prompts(trainer: Trainer) -> tuple[list[int], list[list[int]]]:
    ctx = trainer.algorithm.ctx
    indices = [i for i, _ in ctx.prompts(0)]
    return indices, [ctx.prompt_ids(i) for i in indices]


def tree_samples(cfg) -> dict:
    """Part 1, SPO-tree: edges and tokens of iteration 0's trees."""
    a = cfg.algorithm
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp))
        algorithm = trainer.algorithm
        indices, contexts = _prompts(trainer)
        params = algorithm.ctx.sampling_params(0, SALT_SAMPLE)
        t0 = time.perf_counter()
        trees = sample_trees(trainer.engine, contexts, params, a.tree_branching, a.segment_length)
        seconds = time.perf_counter() - t0
        edges = nonzero = leaves = 0
        for gid, (tree, pi) in enumerate(zip(trees, indices)):
            rewards = algorithm.leaf_rewards(tree, pi)
            signal, record = algorithm.tree_edges(tree, pi, gid, rewards, 0)
            edges += len(tree.nodes) - 1
            nonzero += len(signal)
            leaves += sum(n["leaf"] for n in record["nodes"])
        tokens = sum(t.generated_tokens for t in trees)
    return {"prompts": indices, "segment_samples": edges, "nonzero_samples": nonzero, "complete_responses": leaves,
            "tokens": tokens, "seconds": seconds}


def chain_samples(cfg) -> dict:
    """Part 1, SPO-chain: segments and tokens (responses + MC) of iteration 0 (its whole
    collect step: sample, score, partition, MC values, advantages)."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp))
        indices, _ = _prompts(trainer)
        t0 = time.perf_counter()
        batch = trainer.algorithm.collect(0, Progress(enabled=False, quiet=True))
        seconds = time.perf_counter() - t0
        responses = batch.samples
        segments = sum(len(r.details.boundaries) - 1 for r in responses)
        nonzero = 0
        for r in responses:
            b = r.details.boundaries
            per_token = segment_advantages(b, r.details.values)
            nonzero += sum(1 for k in range(1, len(b)) if abs(per_token[b[k - 1]]) >= 1e-9)
        mc_tokens = batch.work["mc_tokens"]
        tokens = batch.tokens_generated + mc_tokens
    return {"prompts": indices, "segment_samples": segments, "nonzero_samples": nonzero,
            "complete_responses": len(responses), "tokens": tokens, "mc_tokens": mc_tokens, "seconds": seconds}


def tree_throughput(cfg) -> dict:
    """Part 2: the same trees sampled with shared and with re-encoded parent prefixes."""
    a = cfg.algorithm
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp))
        _, contexts = _prompts(trainer)
        params = dataclasses.replace(trainer.algorithm.ctx.sampling_params(0, SALT_SAMPLE), seed=4242)
        token_ids = {}
        for name, share in [("shared_prefix", True), ("re_encoded", False)]:
            trainer.engine.share_prefill = share
            t0 = time.perf_counter()
            trees = sample_trees(trainer.engine, contexts, params, a.tree_branching, a.segment_length)
            seconds = time.perf_counter() - t0
            tokens = sum(t.generated_tokens for t in trees)
            token_ids[name] = [[n.token_ids for n in t.nodes] for t in trees]
            out[name] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / max(seconds, 1e-9)}
            print(f"[tree] {name:14s} {seconds:8.2f} s  {tokens:6d} tokens  {tokens / max(seconds, 1e-9):7.1f} tok/s",
                  flush=True)
        trainer.engine.share_prefill = True
    # Batched and one-at-a-time prefills round differently, so on a real model the sampled
    # trees can diverge; the comparison is therefore of throughput, tokens per second.
    out["same_tokens"] = token_ids["shared_prefix"] == token_ids["re_encoded"]
    out["speedup"] = out["shared_prefix"]["tokens_per_s"] / max(out["re_encoded"]["tokens_per_s"], 1e-9)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree-config", default="cpu-spo-tree")
    p.add_argument("--chain-config", default="cpu-spo-chain")
    p.add_argument("--skip-throughput", action="store_true", help="only part 1")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("overrides", nargs="*", help="section.key=value, applied to both presets")
    args = p.parse_args(argv)
    tree_cfg = load_config(resolve_preset(args.tree_config), args.overrides)
    chain_cfg = load_config(resolve_preset(args.chain_config), args.overrides)
    for cfg in (tree_cfg, chain_cfg):
        cfg.progress, cfg.eval.at_start, cfg.log_episodes = False, False, False

    results: dict = {"tree_config": args.tree_config, "chain_config": args.chain_config}
    tree = tree_samples(tree_cfg)
    chain = chain_samples(chain_cfg)
    if tree["prompts"] != chain["prompts"]:
        raise SystemExit("the two presets pick different prompts; give them the same task, seed and prompt count")
    results["tree"], results["chain"] = tree, chain
    print(f"\nsegment samples per generated token, the same {len(tree['prompts'])} prompts:")
    print(f"{'':22s} {'spo_tree':>10s} {'spo_chain':>10s} {'tree/chain':>11s}")
    for key, label in [("tokens", "generated tokens"), ("complete_responses", "complete responses"),
                       ("segment_samples", "segment samples"), ("nonzero_samples", "  with A != 0")]:
        print(f"{label:22s} {tree[key]:10d} {chain[key]:10d}")
    for key, label in [("segment_samples", "samples / 1k tokens"), ("nonzero_samples", "  with A != 0")]:
        t, c = 1000 * tree[key] / max(tree["tokens"], 1), 1000 * chain[key] / max(chain["tokens"], 1)
        results[f"{key}_per_1k_tokens"] = {"tree": t, "chain": c, "ratio": t / max(c, 1e-9)}
        print(f"{label:22s} {t:10.2f} {c:10.2f} {t / max(c, 1e-9):10.2f}x")
    print(f"{'seconds':22s} {tree['seconds']:10.1f} {chain['seconds']:10.1f}")
    if not args.skip_throughput:
        print()
        results["throughput"] = tree_throughput(tree_cfg)
        th = results["throughput"]
        print(f"prefix reuse: {th['speedup']:.2f}x the tokens/s of re-encoding (identical trees: {th['same_tokens']})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
