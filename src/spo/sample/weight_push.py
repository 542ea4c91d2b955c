"""The order in which a policy's weights are pushed into an engine that holds its own copy
(vLLM): (Hugging Face name, whole tensor) pairs, each made only when the engine asks for it.

Streaming is what keeps a push's memory down: an FSDP2 shard is gathered with
``full_tensor()`` (a collective: every process pushes the same tensors in the same order),
a LoRA layer is merged on the fly, and the engine copies each tensor into its own weights
before the next is made, so a push adds at most one whole tensor beside the model instead
of a second model (docs/distributed.md, docs/vllm.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from spo.config import ConfigError
from spo.models import is_lora, plain_copy

__all__ = ["push_order"]


def push_order(model) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights as vLLM loads them, (Hugging Face name, whole tensor), made one at a
    time while vLLM consumes them: at most one gathered (FSDP) or merged (LoRA) tensor exists
    beside the model at any moment, instead of a second copy of the whole model.

    A LoRA model is merged layer by layer (base weight + peft's ``get_delta_weight``), without
    a copy of the model and without merging in place (which would round the frozen base
    weights at every sync). A sharded LoRA model is copied and merged whole (as before)."""
    if is_lora(model) and not any(hasattr(p, "full_tensor") for p in model.parameters()):
        yield from _lora_merged(model)
        return
    source = plain_copy(model) if is_lora(model) else model
    for name, tensor in source.state_dict().items():
        yield name, _whole(tensor)


def _lora_merged(model) -> Iterator[tuple[str, torch.Tensor]]:
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    adapters = list(model.active_adapters)
    wrapped = {f"{name}.base_layer.weight": module for name, module in base.named_modules()
               if isinstance(module, LoraLayer)}
    for name, tensor in base.state_dict().items():
        if ".lora_" in name:
            continue
        if ".modules_to_save." in name or ".original_module." in name:
            raise ConfigError("sampling.engine=vllm: LoRA adapters with modules_to_save are not supported "
                              "(use sampling.engine=hf)")
        module = wrapped.get(name)
        if module is not None:
            with torch.no_grad():
                for adapter in adapters:
                    if module.use_dora.get(adapter):
                        raise ConfigError("sampling.engine=vllm: DoRA adapters are not supported (use "
                                          "sampling.engine=hf)")
                    if adapter in module.lora_A:
                        tensor = tensor + module.get_delta_weight(adapter)
        yield name.replace(".base_layer.", "."), tensor


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded (FSDP2) tensor gathered whole; others as they are. Gathering is a collective:
    under FSDP every process syncs its own engine at the same point of the loop."""
    full = getattr(tensor, "full_tensor", None)  # a DTensor
    return full() if full is not None else tensor
