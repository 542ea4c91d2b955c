"""Models and tokenizers: loading by name (spo.models.loading), the GGUF-shipped aliases and
their one-time conversion (spo.models.gguf), LoRA adapters (spo.models.lora).

The names other modules use are importable from here (`from spo.models import load_policy`).
"""

from spo.models.gguf import DEFAULT_MODEL, MODEL_ALIASES, convert_gguf_model, convert_gguf_tokenizer, find_gguf_file
from spo.models.loading import (
    ModelNotFoundError,
    cpu_bf16_is_fast,
    default_device,
    freeze,
    load_model_config,
    load_policy,
    load_policy_from_config,
    load_reference,
    load_tokenizer,
    num_parameters,
    resolve_dtype,
    resolve_model_path,
    save_hf_model,
)
from spo.models.lora import (
    DEFAULT_LORA,
    apply_lora,
    is_lora,
    lora_copy_from_state,
    peft_keys,
    peft_lora_options,
    plain_copy,
)

__all__ = [
    "DEFAULT_LORA", "DEFAULT_MODEL", "MODEL_ALIASES", "ModelNotFoundError", "apply_lora", "convert_gguf_model",
    "convert_gguf_tokenizer", "cpu_bf16_is_fast", "default_device", "find_gguf_file", "freeze", "is_lora",
    "load_model_config", "load_policy", "load_policy_from_config", "load_reference", "load_tokenizer",
    "lora_copy_from_state", "num_parameters", "peft_keys", "peft_lora_options", "plain_copy", "resolve_dtype", "resolve_model_path",
    "save_hf_model",
]
