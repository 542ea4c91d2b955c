"""VinePPO: the step partition on tricky texts, and a smoke run whose episode logs follow
the method's rules (MC values at every step start, advantages = value differences)."""

import json
import zlib

import pytest

from spo.algorithms.registry import algorithm_class
from spo.algorithms.spo_chain import SPOChain
from spo.cli import main
from spo.models import load_tokenizer
from spo.partition.segments import delimiter_boundaries, partition_response
from spo.tasks.registry import Task
from spo.train.run_log import read_metrics


@pytest.mark.parametrize("texts, delimiter, expected", [
    (["12", "+", "7", "=", "19"], "\n", [0, 5]),                      # no newline: one step
    (["a", "\n", "b", "\n"], "\n", [0, 2, 4]),                        # trailing newline adds no boundary
    (["a", "\n", "</s>"], "\n", [0, 2, 3]),                           # EOS after the last step: a one-token step
    (["\n", "a"], "\n", [0, 1, 2]),                                   # a response that opens with a newline
    (["a", "\n\n", "b"], "\n", [0, 2, 3]),                            # one token holding two newlines: one boundary
    (["a", "\n", "\n", "b", "\n", "c"], "\n\n", [0, 3, 6]),            # a delimiter split over two tokens
    (["x"], "\n", [0, 1]),                                            # one token
])
def test_step_boundaries(texts, delimiter, expected):
    assert delimiter_boundaries(texts, delimiter) == expected


def test_step_boundaries_cap_and_errors():
    texts = ["a", "\n", "b", "\n", "c", "\n", "d"]
    assert delimiter_boundaries(texts) == [0, 2, 4, 6, 7]
    assert delimiter_boundaries(texts, max_segments=2) == [0, 2, 7]
    with pytest.raises(ValueError):
        delimiter_boundaries([], "\n")
    with pytest.raises(ValueError):
        delimiter_boundaries(["a"], "")
    with pytest.raises(ValueError, match="text of every response token"):
        partition_response([-0.1, -0.2], rule="step")


def test_vineppo_is_spo_chain_with_the_step_rule():
    cls = algorithm_class("vineppo")
    assert issubclass(cls, SPOChain) and cls.partition_rule == "step"


def text_reward(self, problem, text, truncated):
    return 1.0 if zlib.crc32(text.encode()) % 3 == 0 else 0.0


@pytest.fixture(scope="module")
def vine_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vine")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Task, "reward", text_reward)
        assert main(["train", "--config", "smoke-vineppo", "--output-dir", str(out), "sampling.max_new_tokens=32",
                     "eval.at_end=false"]) == 0
    return out


def test_episode_logs_follow_the_vineppo_rules(vine_run):
    tokenizer = load_tokenizer("tiny-char-llama")
    eps = [json.loads(x) for it in (1, 2)
           for x in (vine_run / "episodes" / f"iter_{it:06d}.jsonl").read_text().splitlines()]
    assert len(eps) == 32
    multi = 0
    for ep in eps:
        texts = tokenizer.batch_decode([[t] for t in ep["response_ids"]])
        b = ep["boundaries"]
        assert b == delimiter_boundaries(texts, "\n")
        multi += len(b) > 2
        v, n = ep["values"], ep["value_samples"]
        assert v[-1] == ep["reward"] and n[-1] == 0
        assert all(k == 2 for k in n[:-1])  # mc_samples, the prompt's value included (start_value: mc)
        for k in range(1, len(b)):
            for t in range(b[k - 1], b[k]):
                assert ep["advantages"][t] == pytest.approx(v[k] - v[k - 1], abs=1e-6)
        assert ep["loss_mask"] == [1] * len(ep["response_ids"])  # no probability mask
    assert multi > 0, "no response had two steps: nothing was checked"
    rows = read_metrics(vine_run)
    assert all(r["mc_states"] > 0 and "time_partition" in r and "time_values" in r for r in rows)
