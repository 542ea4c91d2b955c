"""SPO-chain cost: MC continuation throughput with and without prefix sharing, and one
iteration's time by phase for `spo_chain` against `grpo` on the same batch.

    python benchmarks/bench_mc.py                      # cpu-spo-chain preset
    python benchmarks/bench_mc.py --config smoke-spo-chain --skip-iterations

Part 1 samples iteration 0's responses, cuts them with the configured partition, and
sends the same MC states to the engine twice with the same seed: once with each state's
prefix encoded once and shared by its N continuations (spo's default), once re-encoding
it for every continuation (what `model.generate` on repeated prompts does). Part 2 runs
iteration 0 of the trainer with each estimator from the same initial weights, so both see
the same prompts and the same sampled responses; SPO-chain's time is split into its
stages (partition, MC values, advantages). Ratios are of runs in this process.
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

import torch  # noqa: E402

from spo.config import load_config  # noqa: E402
from spo.partition.segments import partition_response  # noqa: E402
from spo.presets import resolve_preset  # noqa: E402
from spo.seeds import SALT_SAMPLE  # noqa: E402
from spo.train.loop import Trainer  # noqa: E402
from spo.train.progress import Progress  # noqa: E402


def mc_states(cfg, rollouts) -> tuple[list[list[int]], list[int]]:
    """Distinct MC states (prompt + response prefix at each inner boundary) and budgets."""
    a = cfg.algorithm
    states, budgets, seen = [], [], set()
    for group in rollouts:
        for r in group:
            bounds, _ = partition_response(r.logprobs, rule=a.partition, rho=a.rho, interval=a.interval,
                                           segment_length=a.segment_length, max_segments=a.max_segments)
            for t in bounds[1:-1]:
                key = tuple(r.context_ids + r.response_ids[:t])
                if key not in seen:
                    seen.add(key)
                    states.append(list(key))
                    budgets.append(cfg.sampling.max_new_tokens - t)
    return states, budgets


def mc_throughput(cfg) -> dict:
    """Part 1: the same MC states through the engine, prefill shared vs re-encoded."""
    a = cfg.algorithm
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp))
        ctx, engine = trainer.algorithm.ctx, trainer.engine
        contexts = [ctx.prompt_ids(i) for i, _ in ctx.prompts(0)]
        params = ctx.sampling_params(0, SALT_SAMPLE)
        rollouts = engine.generate(contexts, params, n=cfg.sampling.group_size)
        states, budgets = mc_states(cfg, rollouts)
        n = a.mc_samples
        out = {"responses": sum(len(g) for g in rollouts), "states": len(states), "mc_samples": n}
        mc_params = dataclasses.replace(params, seed=12345)
        for name, share in [("shared_prefill", True), ("re_encoded", False)]:
            engine.share_prefill = share
            t0 = time.perf_counter()
            res = engine.generate(states, mc_params, n=n, max_new_tokens=budgets) if states else []
            seconds = time.perf_counter() - t0
            tokens = sum(len(r.response_ids) for g in res for r in g)
            out[name] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / max(seconds, 1e-9),
                         "prefill_tokens": sum(len(s) for s in states) * (1 if share else n)}
            print(f"[mc] {name:15s} {seconds:8.2f} s  {tokens:6d} tokens  {tokens / max(seconds, 1e-9):7.1f} tok/s",
                  flush=True)
        engine.share_prefill = True
        if states:
            out["speedup"] = out["re_encoded"]["seconds"] / max(out["shared_prefill"]["seconds"], 1e-9)
    return out


PHASES = ["sample", "score", "partition", "values", "estimate", "optimize", "total"]


def iteration_phases(cfg, estimator: str) -> dict:
    """Part 2: iteration 0 with `estimator`, phases in seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg.algorithm.name = estimator
        trainer = Trainer(cfg, Path(tmp))
        record = trainer.step(0, Progress(enabled=False, quiet=True))
    keys = [f"time_{p}" for p in PHASES] + ["tokens_generated", "mc_tokens", "tokens_generated_total", "reward_mean",
                                            "loss_tokens_frac"]
    return {k: record.get(k, 0) for k in keys}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="cpu-spo-chain")
    ap.add_argument("--skip-iterations", action="store_true", help="only part 1")
    ap.add_argument("--output", default="bench_results/mc.json")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    path = resolve_preset(args.config)
    base = ["eval.at_start=false", "eval.at_end=false", "progress=false", *args.overrides]
    results: dict = {"config": str(path), "overrides": base, "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                     "threads": torch.get_num_threads()}
    results["mc"] = mc_throughput(load_config(path, base))
    if "speedup" in results["mc"]:
        print(f"[mc] prefix sharing: {results['mc']['speedup']:.2f}x faster than re-encoding "
              f"({results['mc']['states']} states x {results['mc']['mc_samples']} continuations)")
    if not args.skip_iterations:
        for est in ("grpo", "spo_chain"):
            results[est] = iteration_phases(load_config(path, base), est)
            print(f"[iter] {est:10s} " + "  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                                  for k, v in results[est].items()), flush=True)
        g, c = results["grpo"], results["spo_chain"]
        print("\nphase (s)        grpo   spo_chain   ratio")
        for k in (f"time_{p}" for p in PHASES):
            print(f"{k[5:]:12s} {g[k]:8.2f} {c[k]:10.2f} {c[k] / max(g[k], 1e-9):7.2f}")
        print(f"tokens       {g['tokens_generated_total']:8.0f} {c['tokens_generated_total']:10.0f}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=1))
    print(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
