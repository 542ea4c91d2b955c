"""`spo credit` measures what training computes: on the same responses, every algorithm's
advantages in credit equal those its `collect` gave the update (SPO-tree: the same trees'
values and edge advantages), and what credit counts as spent equals what training sampled."""

from __future__ import annotations

import copy

import pytest
import torch

from spo.algorithms.base import Context, Response
from spo.algorithms.registry import algorithm_class
from spo.config import build_config
from spo.commands.credit import Responses, Setup, critic_key, run_estimator
from spo.distributed import Dist, make_accelerator
from spo.sample.hf_engine import HFEngine
from spo.tasks.registry import build_task
from spo.train.progress import Progress

QUIET = Progress(enabled=False, quiet=True)

SETTINGS = {
    "grpo": {"estimator": "grpo"},
    "dr_grpo": {"estimator": "grpo", "scale_by_std": False},
    "rloo": {"estimator": "rloo"},
    "reinforce": {"estimator": "reinforce"},
    "reinforce_pp": {"estimator": "reinforce_pp"},
    "spo_chain": {"estimator": "spo_chain", "mc_samples": 2, "interval": 1, "prob_mask": True},
    "spo_chain_mc_start": {"estimator": "spo_chain", "mc_samples": 2, "partition": "fixed", "segment_length": 2,
                           "start_value": "mc"},
    "spo_chain_group_adaptive": {"estimator": "spo_chain", "mc_samples": 3, "interval": 1, "mc_group_samples": True,
                                 "mc_allocation": "adaptive", "mc_budget": 1.5, "start_value": "mc"},
    "spo_chain_lowest": {"estimator": "spo_chain", "mc_samples": 2, "partition": "lowest", "probe_points": 2},
    "vineppo": {"estimator": "vineppo", "mc_samples": 2, "step_delimiter": "e"},
    "ppo": {"estimator": "ppo", "critic_lam": 0.95},
    "spo_tree": {"estimator": "spo_tree", "tree_branching": [2, 2], "segment_length": 2},
}


class ParityTask:
    """A real task's problems and prompts, graded by the parity of the response text's length, cut or not
    (so a random model gets varied rewards)."""

    def __init__(self, task):
        self.task = task

    def __getattr__(self, name):
        return getattr(self.task, name)

    def reward(self, problem, text, truncated):
        return float(len(text) % 2 == 0)


@pytest.fixture(scope="module")
def pieces(tiny_model, tokenizer):
    engine = HFEngine(tiny_model, tokenizer, stop_token_ids=[tokenizer.eos_token_id])
    task = ParityTask(build_task("arith_steps", train_size=8, eval_size=2))
    return engine, task, task.problems("train"), Dist(make_accelerator())


@pytest.mark.parametrize("name", list(SETTINGS))
def test_credit_advantages_are_trainings(name, pieces, tiny_model, tokenizer):
    engine, task, problems, dist = pieces
    algorithm = dict(SETTINGS[name])
    lam = algorithm.pop("critic_lam", 1.0)
    cfg = build_config({"task": {"name": "arith_steps", "prompt_format": "plain"},
                        "sampling": {"prompts_per_iteration": 2, "group_size": 4, "max_new_tokens": 6,
                                     "temperature": 1.0},
                        "algorithm": algorithm, "critic": {"lam": lam}, "seed": 3})
    iteration = 1
    train_ctx = Context(cfg, engine, tokenizer, task, problems, tiny_model, dist, tokenizer.pad_token_id)
    torch.manual_seed(0)
    trainer = algorithm_class(cfg.algorithm.estimator)(train_ctx)
    critic_before = copy.deepcopy(trainer.critic.state_dict()) if name == "ppo" else None
    batch = trainer.collect(iteration, QUIET)

    # credit's problems are the iteration's, in order (problem index = group id = position)
    prompts = train_ctx.prompts(iteration)
    setup = Setup(Context(cfg, engine, tokenizer, task, [problems[pi] for pi, _ in prompts], tiny_model, dist,
                          tokenizer.pad_token_id))
    if name == "ppo":  # the critic that scored the batch (collect trains it afterwards)
        trainer.critic.load_state_dict(critic_before)
        setup.critics[critic_key(cfg)] = (trainer, 0, 0)

    if name == "spo_tree":
        est = run_estimator(setup, cfg, name, iteration, None)
        trees = [r for r in batch.episode_log if r.get("kind") == "tree"]
        assert len(est.trees) == len(trees) == len(prompts)
        for record, values, advantages in zip(trees, est.tree_values, est.tree_advantages):
            assert values == [n["value"] for n in record["nodes"]]
            assert advantages == [n["advantage"] for n in record["nodes"]]
        assert any(a for adv in est.tree_advantages for a in adv[1:])  # the check sees some signal
        assert est.samples == batch.sequences_generated and est.tokens == batch.tokens_generated
        return

    resp = Responses([Response(problem_index=s.group_id, group_id=s.group_id, prompt_ids=s.prompt_ids,
                               response_ids=s.response_ids, logprobs=s.logprobs, finish_reason=s.finish_reason,
                               reward=s.reward) for s in batch.samples])
    assert len({r.reward for r in resp.items}) == 2  # varied rewards: advantages are not all 0
    est = run_estimator(setup, cfg, name, iteration, resp)
    assert est.token_advantages == [s.advantages for s in batch.samples]
    assert any(a != 0 for row in est.token_advantages for a in row)
    assert est.samples == batch.sequences_generated
    assert est.tokens == batch.tokens_generated + batch.extra_tokens
    if cfg.algorithm.estimator in ("spo_chain", "vineppo"):
        assert est.boundaries == [s.details.boundaries for s in batch.samples]
