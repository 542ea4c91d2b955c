"""Behaviour pinned: fp32 smoke runs of GRPO, SPO-chain and SPO-tree give the recorded
metrics and episode logs (tests/golden/, made by `python tests/golden_runs.py`)."""

import json
import math

import pytest
from golden_runs import GOLDEN_DIR, PRESETS, run_preset


def assert_same(expected, actual, where="run"):
    if isinstance(expected, float) or isinstance(actual, float):
        assert isinstance(actual, (int, float)) and isinstance(expected, (int, float)), where
        assert math.isclose(actual, expected, rel_tol=1e-5, abs_tol=1e-6), f"{where}: {actual} != {expected}"
    elif isinstance(expected, dict):
        assert isinstance(actual, dict) and list(actual) == list(expected), f"{where}: keys {list(actual)}"
        for k in expected:
            assert_same(expected[k], actual[k], f"{where}.{k}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: length"
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_same(e, a, f"{where}[{i}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


@pytest.mark.parametrize("preset", PRESETS)
def test_run_matches_the_recorded_one(preset, tmp_path):
    expected = json.loads((GOLDEN_DIR / f"{preset}.json").read_text())
    actual = run_preset(preset, tmp_path / "run")
    assert_same(expected["metrics"], actual["metrics"], f"{preset}.metrics")
    assert_same(expected["episodes"], actual["episodes"], f"{preset}.episodes")


def test_comparison_catches_a_changed_advantage():
    # the comparison itself must be able to fail
    a = {"episodes": [{"advantages": [0.5, -0.25], "response_ids": [3, 4]}]}
    b = json.loads(json.dumps(a))
    b["episodes"][0]["advantages"][1] = -0.2501
    with pytest.raises(AssertionError):
        assert_same(a, b)
    b = json.loads(json.dumps(a))
    b["episodes"][0]["response_ids"][0] = 5
    with pytest.raises(AssertionError):
        assert_same(a, b)
