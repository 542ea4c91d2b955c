"""PPO with a critic: GAE and the clipped value loss against hand-computed values, the
critic's initialisation, episode logs that the GAE rule checks, and resume equality
(the critic and its optimizer come back)."""

import json
import re
import zlib

import pytest
import torch
from conftest import assert_same_metrics, resume_after_crash

from spo.algorithms.ppo import value_model_from
from spo.cli import main
from spo.estimate.gae import gae_advantages
from spo.estimate.registry import EstimatorInputs, get_estimator
from spo.optimize.losses import clipped_value_loss
from spo.tasks.registry import Task
from spo.train.checkpoint import latest_checkpoint
from spo.train.run_log import read_metrics

REWARDS = torch.tensor([1.0, 0.0])
VALUES = torch.tensor([[0.5, 0.6, 0.7], [0.2, 9.0, 9.0]])  # row 1's padding holds junk
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


def test_gae_with_gamma_and_lambda_one_is_return_minus_value():
    adv, ret = gae_advantages(REWARDS, VALUES, MASK)
    assert torch.allclose(adv, torch.tensor([[0.5, 0.4, 0.3], [-0.2, 0.0, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))


def test_gae_by_hand():
    adv, ret = gae_advantages(REWARDS, VALUES, MASK, gamma=0.9, lam=0.5)
    # delta_2 = 1 - 0.7 = 0.3; delta_1 = 0.9 * 0.7 - 0.6 = 0.03; delta_0 = 0.9 * 0.6 - 0.5 = 0.04
    # A_2 = 0.3; A_1 = 0.03 + 0.45 * 0.3 = 0.165; A_0 = 0.04 + 0.45 * 0.165 = 0.11425
    assert torch.allclose(adv[0], torch.tensor([0.11425, 0.165, 0.3]))
    assert torch.allclose(ret[0], adv[0] + VALUES[0])
    inputs = EstimatorInputs(rewards=REWARDS, group_ids=torch.tensor([0, 1]), response_mask=MASK,
                             extras={"values": VALUES})
    assert torch.allclose(get_estimator("gae")(inputs, gamma=0.9, lam=0.5), adv)


def test_clipped_value_loss_by_hand():
    values = torch.tensor([[0.5, 1.0, 0.0]], requires_grad=True)
    old = torch.tensor([[0.4, 0.4, 0.4]])
    returns = torch.tensor([[1.0, 0.0, 0.0]])
    loss, stats = clipped_value_loss(values, old, returns, torch.ones(1, 3), clip=0.2)
    # token 0: inside the clip range, 1/2 (0.5 - 1)^2; token 1: clipped to 0.6, the unclipped
    # error 1 is larger; token 2: clipped to 0.2, whose error 0.04 is larger than 0
    assert torch.allclose(loss, torch.tensor([[0.125, 0.5, 0.02]]))
    assert float(stats["value_clip_frac"]) == pytest.approx(1 / 3)
    loss.sum().backward()
    assert values.grad.tolist()[0] == pytest.approx([-0.5, 1.0, 0.0])  # the clipped token gets no gradient


def test_critic_starts_from_the_policy_trunk(make_tiny_model):
    policy = make_tiny_model()
    critic = value_model_from(policy)
    for (name, p), (_, q) in zip(policy.model.named_parameters(), critic.base_model.named_parameters()):
        assert torch.equal(p, q), name
    assert critic.config.num_labels == 1
    out = critic(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert out.shape == (1, 3, 1)


def text_reward(self, problem, text, truncated):
    return 1.0 if zlib.crc32(text.encode()) % 3 == 0 else 0.0


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Task, "reward", text_reward)
        assert main(["train", "--config", "smoke", "--output-dir", str(out), "algorithm.estimator=ppo",
                     "critic.lr=1e-3", "iterations=3", "save_every=1", "keep_checkpoints=3",
                     "sampling.max_new_tokens=8", "eval.at_end=false"]) == 0
        yield out


def test_episode_logs_follow_the_gae_rule(ppo_run):
    for it in (1, 2, 3):
        for line in (ppo_run / "episodes" / f"iter_{it:06d}.jsonl").read_text().splitlines():
            ep = json.loads(line)
            n = len(ep["response_ids"])
            assert len(ep["values"]) == len(ep["returns"]) == n
            assert ep["returns"] == pytest.approx([ep["reward"]] * n, abs=1e-6)  # gamma = lambda = 1
            assert ep["advantages"] == pytest.approx([ep["reward"] - v for v in ep["values"]], abs=1e-6)
    rows = read_metrics(ppo_run)
    assert all({"critic_loss", "value_error", "value_clip_frac", "time_critic", "time_values"} <= set(r) for r in rows)


def test_critic_training_moves_values_towards_the_returns(tmp_path):
    from spo.algorithms.base import Timer, sample_and_score
    from spo.config import load_config
    from spo.presets import resolve_preset
    from spo.train.loop import Trainer
    from spo.train.progress import Progress

    cfg = load_config(resolve_preset("smoke"), ["algorithm.estimator=ppo", "critic.lr=1e-3", "critic.value_clip=10",
                                                "algorithm.epochs=8", "sampling.max_new_tokens=8"])
    ppo = Trainer(cfg, tmp_path).algorithm
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Task, "reward", text_reward)
        responses = sample_and_score(ppo.ctx, 0, Progress(enabled=False), Timer())
    before = ppo.values(responses)
    mask = torch.tensor([[1.0] * len(r.response_ids) for r in responses])
    _, returns = gae_advantages(torch.tensor([r.reward for r in responses]), before, mask)
    ppo.train_critic(responses, before, returns, 0)
    after = ppo.values(responses)
    error = lambda v: float(((v - returns).abs() * mask).sum() / mask.sum())  # noqa: E731
    assert error(after) < 0.5 * error(before)


def test_critic_is_checkpointed_and_resumes(ppo_run, tmp_path):
    from transformers import AutoModelForTokenClassification

    folder = latest_checkpoint(ppo_run) / "algorithm" / "critic"
    assert AutoModelForTokenClassification.from_pretrained(folder).config.num_labels == 1
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Task, "reward", text_reward)
        crashed = resume_after_crash(ppo_run, tmp_path, last_good=1)
    assert_same_metrics(read_metrics(ppo_run), read_metrics(crashed))


def test_nan_critic_loss_names_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    """The critic trains while the batch is collected; its NaN loss stops the run with the
    same last-good-checkpoint hint as the policy's."""
    import spo.algorithms.ppo as ppo
    real_loss, real_train = ppo.clipped_value_loss, ppo.PPO.train_critic
    poison = {"on": False}

    def train_critic(self, responses, old_values, returns, iteration):  # healthy in iteration 1, NaN after
        poison["on"] = iteration >= 1
        return real_train(self, responses, old_values, returns, iteration)

    def poisoned(*args, **kwargs):
        loss, stats = real_loss(*args, **kwargs)
        return (loss * float("nan") if poison["on"] else loss), stats

    monkeypatch.setattr(ppo, "clipped_value_loss", poisoned)
    monkeypatch.setattr(ppo.PPO, "train_critic", train_critic)
    assert main(["train", "--config", "smoke", "--output-dir", str(tmp_path), "algorithm.name=ppo", "iterations=2",
                 "save_every=1", "sampling.max_new_tokens=8", "eval.at_end=false"]) == 2  # exit 2, no traceback
    err = capsys.readouterr().err
    assert re.search(r"spo: non-finite loss: iteration 2: critic loss is nan; last good checkpoint: .*iter_000001", err)
    assert "Traceback" not in err
