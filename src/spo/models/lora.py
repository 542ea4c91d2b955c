"""LoRA adapters (peft): wrapping a model with them, and copying or saving a LoRA model as a
plain one (adapters merged)."""

from __future__ import annotations

import copy
from typing import Any

import torch

from spo.config import LoraOptions


def peft_lora_options(options: LoraOptions) -> dict[str, Any]:
    """`model.lora`'s options as `peft.LoraConfig` names them."""
    return {"r": options.r, "lora_alpha": options.alpha, "lora_dropout": options.dropout,
            "target_modules": list(options.target_modules)}


# The defaults of `model.lora` (spo.config.LoraOptions): one source for both.
DEFAULT_LORA: dict[str, Any] = peft_lora_options(LoraOptions())


def apply_lora(model, lora: dict | None = None):
    """Wrap ``model`` with peft LoRA adapters (options merged over DEFAULT_LORA)."""
    from peft import LoraConfig, TaskType, get_peft_model

    opts = {**DEFAULT_LORA, **(lora or {})}
    opts.setdefault("task_type", TaskType.CAUSAL_LM)
    return get_peft_model(model, LoraConfig(**opts))


def is_lora(model) -> bool:
    """Whether `model` is wrapped with peft adapters (LoRA): such a model has to be merged
    before it can be saved or copied as a plain Hugging Face model."""
    return hasattr(model, "merge_and_unload")


def plain_copy(model):
    """A deep copy of `model` as a plain HF model: LoRA adapters merged into its weights;
    `model` itself is left untouched (merging in place would change the model being trained)."""
    return copy.deepcopy(model).merge_and_unload() if is_lora(model) else copy.deepcopy(model)


def lora_copy_from_state(model, state_dict: dict[str, torch.Tensor]):
    """A CPU peft model like `model` (a LoRA model, e.g. sharded by FSDP) holding
    `state_dict`, the whole state dict of `model`: built on the meta device, then given the
    tensors of `state_dict`; it can be saved (adapter, merged weights), `model` is untouched."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(model.get_base_model().config)
    copy_ = get_peft_model(base, copy.deepcopy(model.peft_config[model.active_adapter]))
    copy_.load_state_dict(state_dict, assign=True)
    return copy_


def peft_keys(adapter_state: dict[str, torch.Tensor], adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """An adapter file's keys (`...q_proj.lora_A.weight`) as the live peft model names them
    (`...q_proj.lora_A.default.weight`), for loading through a generic state-dict loader."""
    out = {}
    for key, value in adapter_state.items():
        module, _, leaf = key.rpartition(".")
        out[f"{module}.{adapter_name}.{leaf}" if module.rpartition(".")[2].startswith("lora_") else key] = value
    return out
