"""A tiny Llama with a character-level tokenizer, built locally (no hub): `tiny-char-llama`.

For experiments that must train a model from scratch in minutes on a CPU (the procedural
arithmetic task `arith_steps` with `spo sft`): one token per character keeps the
vocabulary under 100 and makes digits, operators and line breaks separate tokens, so an
arithmetic mistake is a mistake in one token.

The folder this writes is an ordinary Hugging Face model folder (config.json, safetensors
weights of a seeded random init, tokenizer.json + tokenizer_config.json), so
`spo.models.load_policy` / `load_tokenizer`, `AutoModelForCausalLM.from_pretrained` and
the HF rollout engine use it unchanged. The name `tiny-char-llama` resolves to
`$SPO_CACHE_DIR/models/tiny-char-llama-v{VERSION}`, built once (atomically) on first use.

The tokenizer (built with the `tokenizers` library): a WordLevel model over single
characters, a pre-tokenizer that splits text into characters, a Fuse decoder (joins
tokens with nothing between them, so decode(encode(text)) == text for any text over
the vocabulary), BOS prepended by the post-processor when `add_special_tokens=True`
(as for Llama), and no chat template (spo then uses its plain prompt format).
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any

from spo.cache import cache_dir, staged_folder

TINY_CHAR_LLAMA = "tiny-char-llama"
VERSION = 1
"""Bump when the vocabulary or the default architecture changes: the cached folder's name
carries it, so an old folder is never mistaken for the new one."""

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]
CHARACTERS = string.digits + "+-*/=#()" + " \n" + string.ascii_letters + ".,:;?!'\"%$<>_[]{}&|^~@\\`"
"""Every character the tokenizer knows (anything else becomes <unk>): digits and operators
first, then whitespace, letters (prompt words such as "Problem:"), and printable punctuation."""

DEFAULT_ARCH: dict[str, Any] = dict(
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)
"""The default architecture (~0.8M parameters); `model.config_overrides` resizes it."""


def build_char_tokenizer():
    """A `PreTrainedTokenizerFast` with one token per character of CHARACTERS."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + list(dict.fromkeys(CHARACTERS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character (newline included) is its own pre-token, hence its own token.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,  # keep " ." etc. exactly as generated
        model_max_length=DEFAULT_ARCH["max_position_embeddings"],
    )


def tiny_llama_config(tokenizer, **overrides: Any):
    """A LlamaConfig sized by DEFAULT_ARCH (+ overrides) for `tokenizer`'s vocabulary."""
    from transformers import LlamaConfig

    arch = {**DEFAULT_ARCH, **overrides}
    return LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **arch,
    )


def write_tiny_char_llama(out_dir: str | os.PathLike, *, seed: int = 0, **overrides: Any) -> Path:
    """Write tokenizer + config + seeded random weights into `out_dir`, atomically (a
    temporary sibling folder renamed into place); an existing complete folder is kept."""
    import torch
    from transformers import LlamaForCausalLM

    out = Path(out_dir)
    if (out / "config.json").is_file():
        return out
    with staged_folder(out) as tmp:
        tokenizer = build_char_tokenizer()
        config = tiny_llama_config(tokenizer, **overrides)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def tiny_char_llama_dir() -> Path:
    """The cached `tiny-char-llama` folder, built on first use (well under a second)."""
    return write_tiny_char_llama(cache_dir() / "models" / f"{TINY_CHAR_LLAMA}-v{VERSION}")
