"""Seed streams (spo.seeds): every named stream is distinct from every other one for every
iteration, rank and index, and a stream is a pure function of its arguments."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spo import seeds
from spo.seeds import NAMED_STREAMS, derive_seed, mix_seed, request_seed, shuffled_positions

SRC = Path(__file__).resolve().parents[1] / "src" / "spo"


@pytest.mark.parametrize("seed", [0, 2**31 - 1])
def test_no_two_streams_share_a_seed_over_a_wide_grid(seed):
    """Iterations 0..799, ranks 0..7, epochs/indices 0..15 of every named stream (the
    update's shuffle at epoch 4 used to equal the prompt stream: salts were summed)."""
    found: dict[int, tuple] = {}
    for stream in NAMED_STREAMS:
        for iteration in range(800):
            for rank in range(8):
                for key in [(), *((e,) for e in range(16))] if stream in (seeds.SALT_UPDATE_SHUFFLE,
                                                                           seeds.SALT_CRITIC) else [()]:
                    value = derive_seed(seed, iteration, rank, stream, *key)
                    where = (stream, iteration, rank, key)
                    assert value not in found, f"{where} and {found[value]} share the seed {value}"
                    found[value] = where
    for epoch in range(64):  # the data-order passes and engine requests draw from the same space
        for value, where in [(mix_seed(seeds.DATA_ORDER, seed, epoch), ("data_order", epoch)),
                             (request_seed(derive_seed(seed, 0, 0, seeds.SALT_SAMPLE), epoch, 0), ("request", epoch))]:
            assert value not in found, f"{where} and {found[value]} share the seed {value}"
            found[value] = where


keys = st.tuples(st.sampled_from(NAMED_STREAMS), st.integers(0, 2**40), st.integers(0, 10**6),
                 st.integers(0, 1024), st.lists(st.integers(0, 10**4), max_size=3))


@settings(max_examples=300, deadline=None)
@given(keys, keys)
def test_different_stream_keys_give_different_seeds(a, b):
    (sa, seed_a, it_a, rank_a, idx_a), (sb, seed_b, it_b, rank_b, idx_b) = a, b
    same = derive_seed(seed_a, it_a, rank_a, sa, *idx_a) == derive_seed(seed_b, it_b, rank_b, sb, *idx_b)
    assert same == (a == b)


def test_seeds_are_deterministic_and_in_range():
    assert derive_seed(3, 5, 1, seeds.SALT_MC) == derive_seed(3, 5, 1, seeds.SALT_MC)
    assert 0 <= derive_seed(2**62, 10**9, 1024, seeds.SALT_EVAL, 99) < 2**62
    assert derive_seed(0, 0, 0, seeds.SALT_UPDATE_SHUFFLE, 1) != derive_seed(0, 0, 0, seeds.SALT_UPDATE_SHUFFLE)
    assert shuffled_positions(10, 0, 10, seed=4) == shuffled_positions(10, 0, 10, seed=4)
    assert sorted(shuffled_positions(10, 10, 10, seed=4)) == list(range(10))


def test_every_seed_of_the_package_comes_from_spo_seeds():
    """No module but spo.seeds names a stream constant or hashes its own seeds."""
    for path in SRC.rglob("*.py"):
        if path.name == "seeds.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
                assert not [n for n in names if n.startswith("SALT_")], (path, names)
            if isinstance(node, ast.FunctionDef):
                assert "seed" not in node.name or node.name in {"request_seed"}, (path, node.name)
