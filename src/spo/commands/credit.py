"""`spo credit`: how accurately each advantage estimator assigns credit, measured against
Monte-Carlo ground truth on a frozen policy (docs/credit.md).

A credit preset has two sections:

    credit:                # CreditOptions below
      estimators: {grpo: [algorithm.estimator=grpo], spo_chain N=4: [algorithm.estimator=spo_chain, ...]}
      prompts: 16
      ground_truth_samples: 64
    run:                   # one RunConfig (model, task, sampling, algorithm defaults)
      model: ...

Steps, all on the frozen policy `run.model`:
  1. responses   `sampling.group_size` responses to each of the first `credit.prompts`
                 problems of `credit.split`, scored;
  2. estimators  every setting's advantages on those responses, computed by its
                 algorithm's own advantages step (`Algorithm.advantages`, the step of
                 training's `collect` after sampling and scoring); SPO-tree samples its
                 own trees and values them with `SPOTree.sample`, `leaf_rewards` and
                 `tree_values`. The samples and tokens each spent are counted;
  3. ground truth V*(prefix) = mean reward of K continuations from the exact token prefix
                 at every `stride`-th token boundary of every response, at every
                 estimator's segment boundary, and at every tree node's end; cached in
                 $SPO_CACHE_DIR/credit/ under a key of the model's weights and the task
                 and sampling settings, so a re-run pays only for states it lacks
                 (`spo.evaluate.ground_truth_cache`);
  4. metrics     `spo.evaluate.credit` per setting: token level (each estimator's
                 advantage of a token against A*_t) and segment level (its own segments
                 or tree edges against V*(end) - V*(start));
  5. report      OUT/credit.md, OUT/credit.json, OUT/credit_vs_samples.png
                 (`spo.evaluate.credit_report`).

The command keeps the config, the frozen policy's setup, the estimators and the scoring;
the pure metrics are in spo.evaluate.credit, the ground truth and its cache in
spo.evaluate.ground_truth and spo.evaluate.ground_truth_cache, the report in
spo.evaluate.credit_report, every advantage in the algorithms.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from spo.algorithms.base import Context, Response, Timer, score_responses
from spo.algorithms.base import sample_responses as base_sample_responses
from spo.algorithms.registry import algorithm_class
from spo.cache import write_text_atomic
from spo.config import ConfigError, RunConfig, build_config
from spo.config_io import load_sections, to_dict
from spo.evaluate.credit import (
    CreditMetrics,
    credit_metrics,
    true_advantages,
    unit_estimates,
)
from spo.evaluate.credit_report import paired_intervals, plot_credit, report_markdown
from spo.evaluate.ground_truth_cache import (
    GroundTruth,
    ground_truth,
    ground_truth_file,
    states_needed,
    unit_boundaries,
)
from spo.presets import resolve_preset
from spo.seeds import SALT_TRUTH
from spo.train.progress import Progress

OUTCOME = ("grpo", "rloo", "reinforce")
CHAIN = ("spo_chain", "vineppo")
SUPPORTED = (*OUTCOME, *CHAIN, "spo_tree", "ppo", "reinforce_pp")


@dataclass
class CreditOptions:
    estimators: dict[str, list[str]] = field(default_factory=lambda: {
        "grpo": ["algorithm.estimator=grpo"],
        "rloo": ["algorithm.estimator=rloo"],
        "spo_chain": ["algorithm.estimator=spo_chain"],
        "spo_tree": ["algorithm.estimator=spo_tree"],
    })
    """Setting label -> `algorithm.*` overrides of `run` (grpo, rloo, reinforce, spo_chain,
    vineppo, spo_tree, ppo, reinforce_pp). All settings share the responses, so only `algorithm.*` may
    differ, and for ppo `critic.*` and `iterations=` (how many PPO iterations train its
    critic on training prompts, the policy frozen, before it scores the responses)."""
    prompts: int = 16
    """How many problems (the first of `split`); each gets `run.sampling.group_size` responses."""
    split: Literal["train", "eval"] = "eval"
    """Which split of the task the problems come from."""
    ground_truth_samples: int = 64
    """K: Monte-Carlo continuations behind every ground-truth value V*(prefix)."""
    stride: int = 1
    """Ground truth at every `stride`-th token boundary (1: every token; larger: units of
    `stride` tokens, each estimator's value for a unit being its tokens' mean)."""
    z: float = 2.0
    """A true advantage is clearly nonzero when |A*| > z SE(A*) (sign agreement, blame)."""
    chunk_size: int = 256
    """Ground-truth states per engine call (the cache is saved after each)."""
    cache: bool = True
    """Read and write the ground-truth cache ($SPO_CACHE_DIR/credit/)."""
    bootstrap: int = 200
    """Resamples of the paired bootstrap over prompts (95% intervals of the token-level
    metrics and of their differences to GRPO); 0 skips it."""
    bootstrap_seed: int = 0
    """Seed of the bootstrap's resampling."""


@dataclass
class CreditConfig:
    credit: CreditOptions
    run: dict[str, Any]  # validated by build_config


def cmd_credit(args: argparse.Namespace) -> int:
    cfg = load_credit_config(resolve_preset(args.config), args.overrides)
    out = Path(args.output_dir or Path("credit") / Path(args.config).stem)
    run_credit(cfg, out)
    print(f"results: {out}/credit.md, {out}/credit.json, plot: {out}/credit_vs_samples.png")
    return 0


def load_credit_config(path: str | Path, overrides: list[str] = ()) -> CreditConfig:
    """Read a credit preset; overrides are `credit.x=...` or `run.section.key=...`."""
    cfg = CreditConfig(*load_sections(path, overrides, "credit", CreditOptions))
    c = cfg.credit
    if not c.estimators:
        raise ConfigError("credit.estimators: at least one setting")
    for key, ok, why in (("prompts", c.prompts >= 1, ">= 1"), ("ground_truth_samples", c.ground_truth_samples >= 2, ">= 2"),
                         ("stride", c.stride >= 1, ">= 1"), ("z", c.z > 0, "> 0"), ("chunk_size", c.chunk_size >= 1, ">= 1")):
        if not ok:
            raise ConfigError(f"credit.{key}: must be {why}, got {getattr(c, key)}")
    base = build_config(cfg.run)
    if base.sampling.group_size < 2:
        raise ConfigError("run.sampling.group_size: GRPO/RLOO need at least 2 responses per prompt")
    for label in c.estimators:
        setting_config(cfg, label)  # every setting must be valid before anything runs
    return cfg


def setting_config(cfg: CreditConfig, label: str) -> RunConfig:
    """The shared run config + the setting's `algorithm.*` overrides."""
    overrides = cfg.credit.estimators[label]
    bad = [o for o in overrides if not o.strip().startswith(("algorithm.", "critic.", "iterations="))]
    if bad:
        raise ConfigError(f"credit.estimators[{label!r}]: only algorithm.*, critic.* and iterations= overrides (the "
                          f"responses are shared), got {bad}")
    try:
        rc = build_config(cfg.run, list(overrides))
    except ConfigError as err:
        raise ConfigError(f"credit.estimators[{label!r}]: {err}") from None
    name = rc.algorithm.estimator
    if name not in SUPPORTED:
        raise ConfigError(f"credit.estimators[{label!r}]: estimator {name!r} is not measured; known: {', '.join(SUPPORTED)}")
    return rc


# ---------------------------------------------------------------------------------------
# The frozen policy and its responses.

@dataclass
class Setup:
    """The frozen policy in training's own `Context`, whose problems are the credit
    problems (problem index = group id = position)."""

    ctx: Context
    critics: dict = field(default_factory=dict)  # PPO critics trained so far, by `critic_key`

    @property
    def cfg(self) -> RunConfig:
        return self.ctx.cfg

    @property
    def model(self) -> Any:
        return self.ctx.policy

    @property
    def tokenizer(self) -> Any:
        return self.ctx.tokenizer

    @property
    def prompts(self) -> list[list[int]]:
        return [self.ctx.prompt_ids(p) for p in range(len(self.ctx.problems))]

    def context(self, rc: RunConfig, problems: list | None = None) -> Context:
        """A context for one setting's algorithm: its config, the same policy and engine."""
        c = self.ctx
        return Context(rc, c.engine, c.tokenizer, c.task, c.problems if problems is None else problems, c.policy,
                       c.dist, c.pad_token_id)

    def score(self, problem_indices: list[int], responses: list[list[int]], truncated: list[bool]) -> list[float]:
        return self.ctx.score(problem_indices, responses, truncated)[1]


def build_setup(cfg: CreditConfig) -> Setup:
    from spo.distributed import Dist, make_accelerator
    from spo.sample.factory import build_engine
    from spo.tasks.registry import build_task
    from spo.train.sft import load_model_and_tokenizer

    rc = build_config(cfg.run)
    torch.manual_seed(rc.seed)
    task = build_task(rc.task.name, **rc.task.options)
    problems = task.problems(cfg.credit.split, cfg.credit.prompts)
    if not problems:
        raise ConfigError(f"task {rc.task.name!r} has no {cfg.credit.split} problems")
    model, tokenizer = load_model_and_tokenizer(rc.model, seed=rc.seed)
    model.eval()
    engine = build_engine(rc.sampling, model, tokenizer)
    return Setup(Context(rc, engine, tokenizer, task, problems, model, Dist(make_accelerator()),
                         tokenizer.pad_token_id))


@dataclass
class Responses:
    """The shared responses, scored (training's `Response` objects), and views of them."""

    items: list[Response]

    @property
    def problem(self) -> list[int]:  # problem index of each response (its group id too)
        return [r.problem_index for r in self.items]

    @property
    def ids(self) -> list[list[int]]:
        return [r.response_ids for r in self.items]

    @property
    def rewards(self) -> list[float]:
        return [r.reward for r in self.items]

    @property
    def tokens(self) -> int:
        return sum(len(r.response_ids) for r in self.items)

    def fresh(self) -> list[Response]:
        """Copies without advantages, for one setting's advantages step to fill."""
        return [dataclasses.replace(r, advantages=[], loss_mask=[], details=None) for r in self.items]


QUIET = Progress(enabled=False, quiet=True)


def sample_responses(setup: Setup) -> Responses:
    """G responses to every credit problem (training's sampling, iteration 0's seed), scored."""
    ctx = setup.ctx
    responses = base_sample_responses(ctx, 0, QUIET, prompts=[(p, p) for p in range(len(ctx.problems))])
    score_responses(ctx, responses)
    return Responses(responses)


# ---------------------------------------------------------------------------------------
# Estimators: token advantages, segments and what they spent, each computed by the
# algorithm's own advantages step (`Algorithm.advantages`; SPO-tree: its sampling and
# tree values) on the shared responses, as training computes them.

@dataclass
class Estimate:
    label: str
    estimator: str
    settings: str
    samples: int  # sequences sampled from the policy: responses or tree nodes, plus MC continuations
    tokens: int  # tokens sampled for them
    token_advantages: list[list[float]] | None = None  # per response (None: SPO-tree)
    boundaries: list[list[int]] | None = None  # per response, its segments (outcome: [0, T])
    trees: list[Any] = field(default_factory=list)  # SPO-tree: sampled trees
    tree_values: list[list[float]] = field(default_factory=list)
    tree_advantages: list[list[float | None]] = field(default_factory=list)
    tree_rewards: list[list[float | None]] = field(default_factory=list)
    work: dict[str, int] = field(default_factory=dict)  # the advantages step's extra sampling
    values: list[list[float]] | None = None  # SPO-chain, VinePPO: V at each boundary, per response


def describe(rc: RunConfig, algorithm: Any) -> str:
    """A setting's one-line summary for the table."""
    a, name = rc.algorithm, rc.algorithm.estimator
    if name in OUTCOME:
        return f"G={rc.sampling.group_size}" + ("" if name != "grpo" or a.scale_by_std else ", no std")
    if name in CHAIN:
        part = {"cutpoint": f"cutpoints rho={a.rho} interval={a.interval}", "fixed": f"every {a.segment_length} tokens",
                "step": "steps", "lowest": f"{a.probe_points} lowest-probability cutpoints rho={a.rho}"}[algorithm.rule]
        return f"N={a.mc_samples}, {part}, V(0)={a.start_value}" + (", group samples" if a.mc_group_samples else "") + (
            f", adaptive budget {a.mc_budget:g}x min {a.mc_min_samples} stop {a.mc_stop_samples}" if a.mc_allocation == "adaptive" else "")
    if name == "reinforce_pp":
        return f"G={rc.sampling.group_size}, returns whitened over the batch"
    if name == "ppo":
        return (f"critic after {rc.iterations} it x {rc.sampling.prompts_per_iteration}x{rc.sampling.group_size}, "
                f"lr {rc.critic.lr:g}, lambda {rc.critic.lam:g}")
    return f"tree {a.tree_branching}, M={a.segment_length}" + (", sibling std" if a.sibling_std else "")


def run_estimator(setup: Setup, rc: RunConfig, label: str, index: int, resp: Responses) -> Estimate:
    """One setting's advantages on the shared responses; `index` is the iteration whose
    seeds its own sampling uses (MC continuations, trees)."""
    name = rc.algorithm.estimator
    if name == "spo_tree":
        return run_tree(setup, rc, label, index)
    spent_samples = spent_tokens = 0
    if name == "ppo":
        algorithm, spent_samples, spent_tokens = trained_critic(setup, rc)
    else:
        algorithm = algorithm_class(name)(setup.context(rc))
    responses = resp.fresh()
    work = algorithm.advantages(responses, index, QUIET, Timer())
    boundaries = [list(r.details.boundaries) if name in CHAIN else [0, len(r.response_ids)] for r in responses]
    return Estimate(label, name, describe(rc, algorithm),
                    len(responses) + work.get("mc_continuations", 0) + spent_samples,
                    resp.tokens + work.get("mc_tokens", 0) + spent_tokens,
                    [list(r.advantages) for r in responses], boundaries, work=work,
                    values=[list(r.details.values) for r in responses] if name in CHAIN else None)


def run_tree(setup: Setup, rc: RunConfig, label: str, index: int) -> Estimate:
    """SPO-tree samples its own trees (one per credit problem) and values them."""
    from spo.algorithms.spo_tree import SPOTree

    tree_algorithm = SPOTree(setup.context(rc))
    trees = tree_algorithm.sample([(p, p) for p in range(len(setup.ctx.problems))], index, QUIET)
    est = Estimate(label, "spo_tree", describe(rc, tree_algorithm), sum(len(t.nodes) - 1 for t in trees),
                   sum(t.generated_tokens for t in trees), trees=trees)
    for pi, tree in enumerate(trees):
        rewards = tree_algorithm.leaf_rewards(tree, pi)
        values, advantages = tree_algorithm.tree_values(tree, rewards)
        est.tree_rewards.append(rewards)
        est.tree_values.append(values)
        est.tree_advantages.append(advantages)
    return est


def critic_key(rc: RunConfig) -> str:
    """Settings that would train the same critic share it."""
    return json.dumps([rc.iterations, rc.seed, to_dict(rc.critic), to_dict(rc.algorithm),
                       rc.sampling.prompts_per_iteration, rc.task.train_limit], sort_keys=True, default=str)


def trained_critic(setup: Setup, rc: RunConfig) -> tuple[Any, int, int]:
    """(PPO, samples, tokens it spent): PPO with its critic trained the way PPO trains it
    (`PPO.collect`: G responses to `sampling.prompts_per_iteration` training prompts per
    iteration, values, GAE, clipped value regression) for `iterations` iterations, the
    policy frozen (a best case for the critic: in training it chases a moving policy).
    GAE's gamma and lambda shape the critic's returns, so a setting's critic is trained
    with its own."""
    from spo.algorithms.ppo import PPO

    key = critic_key(rc)
    if key not in setup.critics:
        ppo = PPO(setup.context(rc, setup.ctx.task.problems("train", rc.task.train_limit)))
        samples = tokens = 0
        for iteration in range(rc.iterations):
            batch = ppo.collect(iteration, QUIET)
            samples += batch.sequences_generated
            tokens += batch.tokens_generated
        setup.critics[key] = (ppo, samples, tokens)
    return setup.critics[key]


def response_details(setup: Setup, resp: Responses, gt: GroundTruth, stride: int) -> list[dict[str, Any]]:
    """Every response with its ground truth: text, reward, V* and SE at its scored boundaries."""
    out = []
    for i, ids in enumerate(resp.ids):
        units = unit_boundaries(len(ids), stride)
        vs = [_v(gt, resp, i, t) for t in units]
        out.append({"problem": resp.problem[i], "reward": resp.rewards[i], "boundaries": units,
                    "tokens": setup.tokenizer.batch_decode([[t] for t in ids]),
                    "v": [round(v, 4) for v, _ in vs], "se": [round(x, 4) for _, x in vs]})
    return out


def _v(gt: GroundTruth, resp: Responses, i: int, t: int) -> tuple[float, float]:
    if t == len(resp.ids[i]):
        return resp.rewards[i], 0.0
    v = gt.value((resp.problem[i], tuple(resp.ids[i][:t])))
    return v.mean, v.se


# ---------------------------------------------------------------------------------------
# Metrics per setting.

@dataclass
class Row:
    label: str
    estimator: str
    settings: str
    samples: int
    tokens: int
    samples_per_prompt: float
    token: CreditMetrics | None  # token level (units of `stride` tokens)
    segment: CreditMetrics  # its own segments (outcome: the whole response) or tree edges
    continuations: int = 0  # MC continuations drawn (SPO-chain, VinePPO)
    value_mse: float | None = None  # MC methods: mean (V - V*)^2 over their interior boundaries
    value_bias: float | None = None  # mean V - V* there
    values: int = 0  # how many values those are

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["token"] = self.token.as_dict() if self.token else None
        d["segment"] = self.segment.as_dict()
        return d


def token_units(e: Estimate, gt: GroundTruth, resp: Responses, stride: int) -> tuple[list, list, list]:
    """Per response: the estimator's value of each unit, A* and SE(A*)."""
    est, true, se = [], [], []
    for i, row in enumerate(e.token_advantages):
        units = unit_boundaries(len(row), stride)
        vs = [_v(gt, resp, i, t) for t in units]
        a, s = true_advantages([v for v, _ in vs], [x for _, x in vs])
        est.append(unit_estimates(row, units))
        true.append(a)
        se.append(s)
    return est, true, se


def score_estimate(e: Estimate, gt: GroundTruth, resp: Responses, opts: CreditOptions, prompts: int) -> Row:
    if e.token_advantages is not None:
        est, true, se = token_units(e, gt, resp, opts.stride)
        seg_est, seg_true, seg_se = [], [], []
        for i, row in enumerate(e.token_advantages):
            b = e.boundaries[i]
            vs = [_v(gt, resp, i, t) for t in b]
            a, s = true_advantages([v for v, _ in vs], [x for _, x in vs])
            seg_est.append([row[t] for t in b[:-1]])
            seg_true.append(a)
            seg_se.append(s)
        wrong = [r < 1.0 for r in resp.rewards]
        token = credit_metrics(est, true, se, wrong=wrong, z=opts.z)
        segment = credit_metrics(seg_est, seg_true, seg_se, z=opts.z)
    else:
        token = None
        est, true, se = [], [], []
        for pi, (tree, adv, rewards) in enumerate(zip(e.trees, e.tree_advantages, e.tree_rewards)):
            def v(node: int) -> tuple[float, float]:
                if rewards[node] is not None:
                    return rewards[node], 0.0
                x = gt.value((pi, tuple(tree.prefix(node))))
                return x.mean, x.se

            for n in tree.nodes[1:]:
                (vc, sc), (vp, sp) = v(n.id), v(n.parent)
                est.append(adv[n.id])
                true.append(vc - vp)
                se.append(math.sqrt(sc * sc + sp * sp))
        segment = credit_metrics([est], [true], [se], z=opts.z)
    row = Row(e.label, e.estimator, e.settings, e.samples, e.tokens, e.samples / prompts, token, segment,
              continuations=e.work.get("mc_continuations", 0))
    if e.values is not None:  # each MC value against V* at its state
        errors = [v[k] - _v(gt, resp, i, b[k])[0]
                  for i, (b, v) in enumerate(zip(e.boundaries, e.values)) for k in range(1, len(b) - 1)]
        if errors:
            row.value_mse = sum(x * x for x in errors) / len(errors)
            row.value_bias = sum(errors) / len(errors)
            row.values = len(errors)
    return row


# ---------------------------------------------------------------------------------------
# The command.

def run_credit(cfg: CreditConfig, out: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    opts = cfg.credit
    setup = build_setup(cfg)
    t_setup = time.perf_counter() - t0
    resp = sample_responses(setup)
    print(f"[credit] {len(resp.ids)} responses to {len(setup.prompts)} prompts, accuracy "
          f"{sum(r >= 1.0 for r in resp.rewards) / len(resp.rewards):.3f}", flush=True)
    t1 = time.perf_counter()
    estimates = []
    for index, label in enumerate(opts.estimators, start=1):
        estimates.append(run_estimator(setup, setting_config(cfg, label), label, index, resp))
        print(f"[credit] {label}: {estimates[-1].samples} samples, {estimates[-1].tokens} tokens", flush=True)
    t_est = time.perf_counter() - t1
    states = states_needed(resp.problem, resp.ids, opts.stride, [e.boundaries for e in estimates if e.boundaries is not None],
                           [e.trees for e in estimates])
    cache_file = ground_truth_file(setup.model, setup.cfg, opts.ground_truth_samples) if opts.cache else None
    gt = ground_truth(setup.ctx.engine, setup.prompts, setup.score, states, num_samples=opts.ground_truth_samples,
                      params=setup.ctx.sampling_params(0, SALT_TRUTH), budget=setup.cfg.sampling.max_new_tokens,
                      chunk_size=opts.chunk_size, cache_file=cache_file)
    rows = [score_estimate(e, gt, resp, opts, len(setup.prompts)) for e in estimates]
    wrong = [r < 1.0 for r in resp.rewards]
    token_level = {e.label: token_units(e, gt, resp, opts.stride)
                   for e in estimates if e.token_advantages is not None}
    intervals = paired_intervals(token_level if opts.bootstrap else {}, {e.label: e.estimator for e in estimates},
                                 resp.problem, wrong, resamples=opts.bootstrap, seed=opts.bootstrap_seed, z=opts.z)
    wall = time.perf_counter() - t0
    result = {
        "config": {"credit": to_dict(opts), "run": cfg.run},
        "responses": len(resp.ids), "prompts": len(setup.prompts),
        "accuracy": sum(r >= 1.0 for r in resp.rewards) / len(resp.rewards),
        "wrong_responses": sum(r < 1.0 for r in resp.rewards),
        "response_tokens": resp.tokens,
        "ground_truth": {"k": opts.ground_truth_samples, "stride": opts.stride, "states": gt.states,
                         "states_sampled_now": gt.computed, "continuations_now": gt.samples,
                         "tokens_now": gt.tokens, "seconds": gt.seconds, "cache_file": gt.cache_file},
        "seconds": {"setup": t_setup, "estimators": t_est, "ground_truth": gt.seconds, "wall": wall},
        "rows": [r.as_dict() for r in rows],
        "bootstrap": intervals,
        "responses_detail": response_details(setup, resp, gt, opts.stride),
    }
    out.mkdir(parents=True, exist_ok=True)
    text = report_markdown(result)
    write_text_atomic(out / "credit.md", f"# spo credit\n\n{text}")
    write_text_atomic(out / "credit.json", json.dumps(result, indent=2))
    plot_credit(result["rows"], out / "credit_vs_samples.png")
    print(text)
    return result


