"""SPO-chain end to end: the episode logs obey the method's rules, and resume works."""

import json
import math

import pytest
from conftest import assert_same_metrics, resume_after_crash

from spo.cli import main
from spo.partition.segments import cutpoint_boundaries, cutpoints_from_logprobs
from spo.train.checkpoint import latest_checkpoint
from spo.train.run_log import read_metrics

RHO, INTERVAL = 0.9, 2


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("chain")
    args = ["train", "--config", "smoke-spo-chain", "--output-dir", str(out), "sampling.max_new_tokens=8",
            "task.eval_limit=4", "save_every=1", "keep_checkpoints=3"]
    assert main(args) == 0
    return out


def episodes(run, it):
    return [json.loads(x) for x in (run / "episodes" / f"iter_{it:06d}.jsonl").read_text().splitlines()]


def test_episode_logs_follow_the_spo_chain_rules(chain_run):
    eps = episodes(chain_run, 1) + episodes(chain_run, 2)
    assert len(eps) == 32
    for ep in eps:
        T = len(ep["response_ids"])
        cuts = cutpoints_from_logprobs(ep["logprobs"], RHO)
        assert ep["cutpoints"] == cuts
        b = ep["boundaries"]
        assert b == cutpoint_boundaries(cuts, T, INTERVAL)  # the configured rule on the logged probabilities
        assert b[0] == 0 and b[-1] == T
        v = ep["values"]
        assert len(v) == len(ep["value_samples"]) == len(b)
        assert v[-1] == ep["reward"] and ep["value_samples"][-1] == 0
        assert all(n == 2 for n in ep["value_samples"][1:-1])  # mc_samples
        for k in range(1, len(b)):
            for t in range(b[k - 1], b[k]):
                assert ep["advantages"][t] == pytest.approx(v[k] - v[k - 1], abs=1e-6)
        mask = [1 if lp < math.log(RHO) else 0 for lp in ep["logprobs"]]
        assert ep["loss_mask"] == mask


def test_start_value_is_the_group_mean(chain_run):
    eps = episodes(chain_run, 1)
    by_group = {}
    for ep in eps:
        by_group.setdefault(ep["group_id"], []).append(ep["reward"])
    for ep in eps:
        rewards = by_group[ep["group_id"]]
        assert ep["values"][0] == pytest.approx(sum(rewards) / len(rewards))
        assert ep["value_samples"][0] == len(rewards)


def test_mc_work_is_logged(chain_run):
    rows = read_metrics(chain_run)
    assert all(r["mc_states"] > 0 and r["mc_tokens"] > 0 for r in rows)
    assert all(r["tokens_generated_total"] == r["tokens_generated"] + r["mc_tokens"] for r in rows)


def test_spo_chain_resume_matches(chain_run, tmp_path):
    crashed = resume_after_crash(chain_run, tmp_path, last_good=1)
    assert_same_metrics(read_metrics(chain_run), read_metrics(crashed))
    assert episodes(chain_run, 2) == episodes(crashed, 2)
    assert latest_checkpoint(crashed).name == "iter_000002"
