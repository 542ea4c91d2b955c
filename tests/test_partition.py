"""Segment partition rules (SPO section 1), including the edge cases the spec names."""

import math

import pytest

from spo.partition.segments import (
    cutpoint_boundaries,
    cutpoints,
    cutpoints_from_logprobs,
    fixed_boundaries,
    partition_response,
)


def test_cutpoints_are_strictly_below_rho():
    probs = [0.95, 0.9, 0.89, 1.0, 0.1]
    assert cutpoints(probs, 0.9) == [2, 4]  # 0.9 itself is not a cutpoint
    assert cutpoints_from_logprobs([math.log(p) for p in probs], 0.9) == [2, 4]
    assert cutpoints(probs, 1.0) == [0, 1, 2, 4]


def test_every_interval_th_cutpoint_opens_a_segment():
    # cutpoints at 2, 4, 5, 9, 11, 12, 15; interval 3 -> openers 2, 9, 15
    assert cutpoint_boundaries([2, 4, 5, 9, 11, 12, 15], 20, interval=3) == [0, 2, 9, 15, 20]
    assert cutpoint_boundaries([2, 4, 5, 9], 20, interval=1) == [0, 2, 4, 5, 9, 20]


def test_no_cutpoint_gives_one_segment():
    assert cutpoint_boundaries([], 7, interval=5) == [0, 7]


def test_cutpoint_at_first_token_is_t0():
    assert cutpoint_boundaries([0, 3, 4], 6, interval=2) == [0, 4, 6]
    assert cutpoint_boundaries([0], 1, interval=1) == [0, 1]


def test_cutpoint_at_last_token():
    # the boundary just before the last token leaves a one-token final segment
    assert cutpoint_boundaries([5], 6, interval=1) == [0, 5, 6]


def test_length_one_response():
    assert cutpoint_boundaries([], 1) == [0, 1]
    assert fixed_boundaries(1, 4) == [0, 1]


def test_segment_cap_thins_evenly():
    cuts = list(range(1, 21))  # 20 cutpoints, interval 1 -> 21 segments uncapped
    b = cutpoint_boundaries(cuts, 30, interval=1, max_segments=5)
    assert len(b) - 1 == 5
    assert b == [0, 1, 6, 11, 16, 30]


def test_fixed_length_boundaries():
    assert fixed_boundaries(10, 3) == [0, 3, 6, 9, 10]
    assert fixed_boundaries(9, 3) == [0, 3, 6, 9]
    assert fixed_boundaries(10, 3, max_segments=2) == [0, 3, 10]


@pytest.mark.parametrize(
    "call",
    [
        lambda: cutpoint_boundaries([1], 0),
        lambda: cutpoint_boundaries([1], 5, interval=0),
        lambda: cutpoint_boundaries([5], 5),
        lambda: cutpoint_boundaries([1], 5, max_segments=0),
        lambda: fixed_boundaries(5, 0),
        lambda: cutpoints([0.5], 0.0),
    ],
)
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()


def test_partition_response_applies_the_configured_rule():
    lp = [math.log(p) for p in (0.99, 0.5, 0.95, 0.3, 0.2, 0.99)]  # cutpoints (p < 0.9): 1, 3, 4
    assert partition_response(lp, rule="cutpoint", rho=0.9, interval=2) == ([0, 1, 4, 6], [1, 3, 4])
    assert partition_response(lp, rule="fixed", rho=0.9, segment_length=4) == ([0, 4, 6], [1, 3, 4])
    with pytest.raises(ValueError, match="unknown partition rule"):
        partition_response(lp, rule="steps")


def test_lowest_probability_rule_probes_the_k_least_likely_cutpoints():
    import math

    from spo.partition.segments import lowest_probability_boundaries

    probs = [0.5, 0.95, 0.3, 0.99, 0.6, 0.2, 0.97, 0.6]  # cutpoints (< 0.9): 0, 2, 4, 5, 7
    lp = [math.log(p) for p in probs]
    bounds, cuts = partition_response(lp, rule="lowest", rho=0.9, probe_points=2)
    assert cuts == [0, 2, 4, 5, 7]
    assert bounds == [0, 2, 5, 8]  # the two least likely after token 0: 0.2 (5) and 0.3 (2)
    assert partition_response(lp, rule="lowest", rho=0.9, probe_points=3)[0] == [0, 2, 4, 5, 8]  # tie 0.6: the earlier
    assert lowest_probability_boundaries(lp, cuts, 10) == [0, 2, 4, 5, 7, 8]  # fewer cutpoints than K: all
    assert partition_response([math.log(0.99)] * 3, rule="lowest", rho=0.9)[0] == [0, 3]  # none: one segment
