"""HF engine against vLLM engine on the same work, in one process: GRPO sampling, SPO-chain's
Monte-Carlo continuations, one SPO-tree level, the vLLM engine's weight sync, and one full
training iteration of GRPO and of SPO-chain (today's MC and issue 20's cheaper-MC options)
with the vLLM engine.

    python benchmarks/bench_engines.py                  # cpu-spo-chain, N = 9, interval 5, fp32
    python benchmarks/bench_engines.py --skip-iterations
    python benchmarks/bench_engines.py --skip-engines --repeats 2 --variants fixed,group,adaptive
    python benchmarks/bench_engines.py --config smoke-spo-chain --tree-config smoke-spo-tree \\
        model.config_overrides.head_dim=32              # seconds; what the test runs

Needs vLLM (the `.venv-vllm` of `make vllm-venv` on a CPU). Defaults: the cpu-spo-chain
preset with `algorithm.mc_samples=9 algorithm.interval=5 model.dtype=float32` (the
reference's N and interval); overrides after those win and apply to both presets.

Part 1, same work for both engines (ratios are of runs in this process):
  * sampling: iteration 0's prompts x G samples (each engine its own samples: tokens/s);
  * MC: the states SPO-chain would continue from (the HF engine's iteration-0 responses cut
    by the cutpoint rule), N continuations each, to the end of the response budget, sent
    in one call: HF with each prefix encoded once for its N samples, HF re-encoding the
    prefix for every sample (what `model.generate` on repeated prompts does), and vLLM
    with prefix caching (every shared block encoded once, across states too);
  * tree: the last level of the cpu-spo-tree preset's trees (levels above sampled once by
    the HF engine), every open node's children in one call;
  * sync: seconds of `sync_weights()` of the vLLM engine (the full state dict pushed, the
    prefix cache emptied), several times.
Part 2: `Trainer.step(0)` of `grpo` and of `spo_chain` with `sampling.engine=vllm`, by phase,
SPO-chain once per `--variants` entry (VARIANTS below; each adds its overrides after the
defaults, before the command line's; default fixed,group,adaptive,adaptive-0.5,lowest-2):
  * fixed: today's rule, N fresh continuations per state;
  * group: `algorithm.mc_group_samples=true` (the group's responses that share a state's
    prefix count as its samples, only the rest are drawn);
  * adaptive: group + `algorithm.mc_allocation=adaptive` (budget `mc_budget` 1.0 x N x states);
    adaptive-B: the same with `algorithm.mc_budget=B` (adaptive-0.5, adaptive-0.25, ...);
  * lowest-K: `algorithm.partition=lowest algorithm.probe_points=K` (at most K states per
    response, at its K lowest-probability cutpoints).
Every run is iteration 0 from the same weights and seed, so all see the same prompts and
the same sampled responses. `--repeats R` runs the whole list (GRPO first, then each
variant) R times; each ratio is of an SPO-chain iteration over the GRPO iteration of the
same repeat, and the summary gives their mean. Beside each: generated tokens, MC
continuation tokens, states, continuations drawn (and group samples used).
Targets (issues 10 and 20, this CPU): MC tokens/s of vLLM >= 3x the HF engine re-encoding
every prefix; a full SPO-chain iteration <= 2x a GRPO iteration.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from spo.config import ConfigError, load_config  # noqa: E402
from spo.presets import resolve_preset  # noqa: E402
from spo.sample.factory import build_engine  # noqa: E402
from spo.seeds import SALT_SAMPLE  # noqa: E402
from spo.train.loop import Trainer  # noqa: E402
from spo.train.progress import Progress  # noqa: E402

from bench_mc import PHASES, mc_states  # noqa: E402  (this folder: run as python benchmarks/...)

DEFAULTS = ["algorithm.mc_samples=9", "algorithm.interval=5", "model.dtype=float32",
            "eval.at_start=false", "eval.at_end=false", "progress=false"]
GROUP = ["algorithm.mc_group_samples=true"]
ADAPTIVE = [*GROUP, "algorithm.mc_allocation=adaptive"]
VARIANTS = {  # SPO-chain's MC rule in part 2: name -> overrides, and the option a "-value" suffix sets
    "fixed": ([], None), "group": (GROUP, None), "adaptive": (ADAPTIVE, "algorithm.mc_budget"),
    "lowest": (["algorithm.partition=lowest"], "algorithm.probe_points"),
}
DEFAULT_VARIANTS = "fixed,group,adaptive,adaptive-0.5,lowest-2"
RULE_OPTIONS = ["partition", "interval", "probe_points", "mc_samples", "mc_group_samples", "mc_allocation", "mc_budget"]
MC_KEYS = ["mc_states", "mc_continuations", "mc_group_samples", "mc_states_free", "mc_engine_calls"]


def timed(engine, contexts, params, n, budgets=None) -> dict:
    t0 = time.perf_counter()
    out = engine.generate(contexts, params, n=n, max_new_tokens=budgets) if contexts else []
    seconds = time.perf_counter() - t0
    tokens = sum(len(r.response_ids) for g in out for r in g)
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / max(seconds, 1e-9), "rollouts": out}


def row(name: str, r: dict) -> None:
    print(f"  {name:34s} {r['seconds']:8.2f} s {r['tokens']:7d} tokens {r['tokens_per_s']:8.1f} tok/s", flush=True)


def last_tree_level(tree_cfg, hf, contexts, params) -> tuple[list[list[int]], list[int], int]:
    """The open nodes of the last level of the trees of `contexts` (upper levels sampled
    by `hf`), their budgets, and the last level's branching."""
    a = tree_cfg.algorithm
    budget, m = tree_cfg.sampling.max_new_tokens, a.segment_length
    nodes = [(list(c), 0) for c in contexts]  # (context, tokens used)
    for depth, b in enumerate(a.tree_branching[:-1]):
        limits = [min(m, budget - used) for _, used in nodes]
        level = hf.generate([c for c, _ in nodes], dataclasses.replace(params, seed=params.seed + depth), n=b,
                            max_new_tokens=limits)
        nodes = [(c + r.response_ids, used + len(r.response_ids))
                 for (c, used), group in zip(nodes, level) for r in group
                 if r.finish_reason == "length" and used + len(r.response_ids) < budget]
    return [c for c, _ in nodes], [budget - used for _, used in nodes], a.tree_branching[-1]


def engine_throughput(cfg, tree_cfg, sync_repeats: int) -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp))  # the HF engine, the policy, iteration 0's prompts
        ctx, hf = trainer.algorithm.ctx, trainer.engine
        t0 = time.perf_counter()
        vllm = build_engine(dataclasses.replace(cfg.sampling, engine="vllm"), trainer.model, trainer.tokenizer)
        out["vllm_start_seconds"] = time.perf_counter() - t0
        vllm.sync_weights()  # the first push (else the first generate does it)
        print(f"[start] vLLM engine {out['vllm_start_seconds']:.1f} s, first weight push "
              f"{vllm.sync_seconds[-1]:.2f} s", flush=True)
        contexts = [ctx.prompt_ids(i) for i, _ in ctx.prompts(0)]
        params = ctx.sampling_params(0, SALT_SAMPLE)
        G, N = cfg.sampling.group_size, cfg.algorithm.mc_samples

        for engine in (hf, vllm):  # first-call costs (kernel selection, compiled helpers) out of the timings
            engine.generate(contexts[:2], dataclasses.replace(params, max_new_tokens=4), n=2)
        print(f"[sample] {len(contexts)} prompts x {G}, <= {cfg.sampling.max_new_tokens} tokens", flush=True)
        sample = {"hf": timed(hf, contexts, params, G), "vllm": timed(vllm, contexts, params, G)}
        for k, r in sample.items():
            row(k, r)
        states, budgets = mc_states(cfg, sample["hf"]["rollouts"])
        mc_params = dataclasses.replace(params, seed=12345)
        print(f"[mc] {len(states)} states x {N} continuations (interval {cfg.algorithm.interval})", flush=True)
        mc = {"vllm": timed(vllm, states, mc_params, N, budgets)}
        mc["vllm"]["cached_prompt_tokens"] = vllm.last_stats.cached_prompt_tokens
        mc["vllm"]["prompt_tokens"] = vllm.last_stats.prompt_tokens
        mc["hf_shared_prefill"] = timed(hf, states, mc_params, N, budgets)
        hf.share_prefill = False
        mc["hf_re_encoded"] = timed(hf, states, mc_params, N, budgets)
        hf.share_prefill = True
        for k, r in mc.items():
            row(k, r)

        tree_params = dataclasses.replace(params, max_new_tokens=tree_cfg.sampling.max_new_tokens,
                                          temperature=tree_cfg.sampling.temperature)
        level, level_budgets, b = last_tree_level(tree_cfg, hf, contexts, tree_params)
        print(f"[tree] last level: {len(level)} open nodes x {b} children", flush=True)
        tree = {"hf": timed(hf, level, tree_params, b, level_budgets),
                "vllm": timed(vllm, level, tree_params, b, level_budgets)}
        for k, r in tree.items():
            row(k, r)

        for _ in range(sync_repeats):
            vllm.sync_weights()
        sync = vllm.sync_seconds[1:]
        print(f"[sync] {len(sync)} pushes: " + ", ".join(f"{s:.2f}" for s in sync) + " s", flush=True)
        vllm.close()
    for part in (sample, mc, tree):
        for r in part.values():
            r.pop("rollouts")
    out.update(states=len(states), mc_samples=N, sample=sample, mc=mc,
               tree={"open_nodes": len(level), "children": b, **tree}, sync_seconds=sync)
    out["ratios"] = {
        "sample_vllm_over_hf": sample["vllm"]["tokens_per_s"] / sample["hf"]["tokens_per_s"],
        "mc_vllm_over_hf_re_encoded": mc["vllm"]["tokens_per_s"] / mc["hf_re_encoded"]["tokens_per_s"],
        "mc_vllm_over_hf_shared": mc["vllm"]["tokens_per_s"] / mc["hf_shared_prefill"]["tokens_per_s"],
        "mc_hf_shared_over_re_encoded": mc["hf_shared_prefill"]["tokens_per_s"] / mc["hf_re_encoded"]["tokens_per_s"],
        "tree_vllm_over_hf": tree["vllm"]["tokens_per_s"] / max(tree["hf"]["tokens_per_s"], 1e-9),
    }
    return out


def iteration(cfg, estimator: str) -> dict:
    """Trainer.step(0) with the vLLM engine: phases in seconds, tokens, MC work, weight-sync seconds."""
    cfg = dataclasses.replace(cfg, algorithm=dataclasses.replace(cfg.algorithm, name=estimator),
                              sampling=dataclasses.replace(cfg.sampling, engine="vllm"))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        trainer = Trainer(cfg, Path(tmp))
        built = time.perf_counter() - t0
        record = trainer.step(0, Progress(enabled=False, quiet=True))
        sync = list(trainer.engine.sync_seconds)
        trainer.engine.close()
    keys = [f"time_{p}" for p in PHASES] + ["tokens_generated", "mc_tokens", "tokens_generated_total", *MC_KEYS]
    return {**{k: record.get(k, 0) for k in keys}, "trainer_build_seconds": built, "sync_seconds": sync,
            "rule": {k: getattr(cfg.algorithm, k) for k in RULE_OPTIONS}}  # what the run used


def variant_overrides(name: str) -> list[str]:
    """`adaptive-0.5` -> the adaptive overrides + algorithm.mc_budget=0.5 (values checked by the config)."""
    base, _, value = name.partition("-")
    if base not in VARIANTS or (value and VARIANTS[base][1] is None) or (base == "lowest" and not value):
        raise ConfigError(f"--variants: unknown variant {name!r} (fixed, group, adaptive[-BUDGET], lowest-K)")
    overrides, option = VARIANTS[base]
    return overrides + ([f"{option}={value}"] if value else [])


def iterations(args, overrides: list[str]) -> dict:
    """Part 2: per repeat, GRPO then SPO-chain with each variant; ratios to that repeat's GRPO."""
    runs: list[dict] = []
    for rep in range(args.repeats):
        grpo = iteration(load_config(resolve_preset(args.config), overrides), "grpo")
        show(f"grpo #{rep + 1}", grpo)
        run = {"grpo": grpo}
        for name in args.variants:
            cfg = load_config(resolve_preset(args.config),
                              [*DEFAULTS, *variant_overrides(name), *args.overrides])
            run[name] = iteration(cfg, "spo_chain")
            run[name]["over_grpo"] = run[name]["time_total"] / max(grpo["time_total"], 1e-9)
            show(f"{name} #{rep + 1}", run[name])
            gc.collect()
        runs.append(run)
    names = ["grpo", *args.variants]
    mean = {n: {k: sum(r[n][k] for r in runs) / len(runs) for k, v in runs[0][n].items() if isinstance(v, (int, float))}
            for n in names}
    print(f"\nphase (s, mean of {len(runs)})" + "".join(f"{n:>13s}" for n in names) + "   (vLLM engine)")
    for k in (f"time_{p}" for p in PHASES):
        print(f"{k[5:]:22s}" + "".join(f"{mean[n][k]:13.2f}" for n in names))
    for k in ["tokens_generated", "mc_tokens", *MC_KEYS]:
        print(f"{k:22s}" + "".join(f"{mean[n][k]:13.0f}" for n in names))
    print(f"{'SPO-chain / GRPO':22s}{'':13s}" + "".join(f"{mean[n]['over_grpo']:13.2f}" for n in args.variants)
          + "   (target <= 2)")
    if len(runs) > 1:
        each = {n: "/".join(f"{r[n]['over_grpo']:.2f}" for r in runs) for n in args.variants}
        print(f"{'  per repeat':22s}{'':13s}" + "".join(f"{each[n]:>13s}" for n in args.variants))
    return {"runs": runs, "mean": mean, "variant_overrides": {n: variant_overrides(n) for n in args.variants}}


def show(label: str, r: dict) -> None:
    print(f"[iter] {label:16s} " + "  ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in r.items() if k not in ("sync_seconds", "rule")), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="cpu-spo-chain", help="preset of the sampling and MC parts")
    ap.add_argument("--tree-config", default="cpu-spo-tree", help="preset whose trees give the tree level")
    ap.add_argument("--skip-iterations", action="store_true", help="only part 1")
    ap.add_argument("--skip-engines", action="store_true", help="only part 2")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS,
                    help=f"comma-separated SPO-chain MC rules of part 2 (default {DEFAULT_VARIANTS}; the docstring)")
    ap.add_argument("--repeats", type=int, default=1, help="times part 2 runs GRPO and every variant")
    ap.add_argument("--sync-repeats", type=int, default=3)
    ap.add_argument("--output", default="bench_results/engines.json")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    try:  # a bad name or value fails before anything runs
        for name in args.variants:
            load_config(resolve_preset(args.config), [*DEFAULTS, *variant_overrides(name), *args.overrides])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    overrides = [*DEFAULTS, *args.overrides]
    cfg = load_config(resolve_preset(args.config), overrides)
    tree_cfg = load_config(resolve_preset(args.tree_config), overrides)
    results: dict = {"config": args.config, "tree_config": args.tree_config, "overrides": overrides,
                     "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": platform.processor() or platform.machine(),
                     "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                     "load_average_before": os.getloadavg()}
    if not args.skip_engines:
        results["engines"] = engine_throughput(cfg, tree_cfg, args.sync_repeats)
        gc.collect()
    if not args.skip_iterations:
        results["iterations"] = iterations(args, overrides)
        results["ratios"] = {"spo_chain_iteration_over_grpo": {n: results["iterations"]["mean"][n]["over_grpo"]
                                                               for n in args.variants}}
    results["load_average_after"] = os.getloadavg()
    results["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # whole process
    if "engines" in results:
        r = results["engines"]["ratios"]
        print(f"\nMC: vLLM {r['mc_vllm_over_hf_re_encoded']:.2f}x the tokens/s of the HF engine re-encoding every prefix "
              f"(target >= 3), {r['mc_vllm_over_hf_shared']:.2f}x the HF engine sharing each prefix; sampling "
              f"{r['sample_vllm_over_hf']:.2f}x; tree level {r['tree_vllm_over_hf']:.2f}x")
    for name, ratio in results.get("ratios", {}).get("spo_chain_iteration_over_grpo", {}).items():
        print(f"SPO-chain ({name}) iteration / GRPO iteration (vLLM): {ratio:.2f} (target <= 2)")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=1))
    print(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
