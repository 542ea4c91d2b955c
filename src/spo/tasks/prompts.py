"""Prompt formats: question (+ answer-format instruction) -> prompt token ids.

"chat"  the tokenizer's chat template with a generation prompt (instruct models); falls back
        to "plain" when the tokenizer has no template (base models).
"plain" the reference's (VinePPO/SPO) format "Problem:\\n{question}\\n\\nSolution:", which
        its SFT'd base models were trained on.
The ids are built directly (tokenize=True), never by re-tokenising decoded text, so that the
sampler continues from exactly these tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

PromptStyle = Literal["chat", "plain"]
PLAIN_TEMPLATE = "Problem:\n{question}\n\nSolution:"


def user_message(question: str, instruction: str | None = None) -> str:
    """The question, then the instruction after a blank line (when there is one)."""
    question = question.strip()
    return f"{question}\n\n{instruction.strip()}" if instruction and instruction.strip() else question


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _messages(question: str, system_prompt: str | None, instruction: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": user_message(question, instruction)})
    return messages


def _plain_text(question: str, system_prompt: str | None, instruction: str | None) -> str:
    """Plain format; a system prompt, if any, goes first as its own paragraph."""
    text = PLAIN_TEMPLATE.format(question=user_message(question, instruction))
    return f"{system_prompt.strip()}\n\n{text}" if system_prompt and system_prompt.strip() else text


def _check_style(style: str) -> None:
    if style not in ("chat", "plain"):
        raise ValueError(f"unknown prompt style {style!r}; expected 'chat' or 'plain'")


def _as_id_list(encoded: Any) -> list[int]:
    """Token ids as a flat list of Python ints, whatever transformers returned: a list, a
    BatchEncoding/dict with "input_ids" (transformers 5 default), a tensor, or a batch of one."""
    if isinstance(encoded, Mapping) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    encoded = list(encoded)
    if encoded and isinstance(encoded[0], (list, tuple)):
        if len(encoded) != 1:
            raise ValueError(f"expected one sequence of token ids, got a batch of {len(encoded)}")
        encoded = list(encoded[0])
    return [int(t) for t in encoded]


def build_prompt_text(
    tokenizer: Any,
    question: str,
    style: PromptStyle = "chat",
    system_prompt: str | None = None,
    instruction: str | None = None,
) -> str:
    """The prompt as text (for logs and previews; use `build_prompt_ids` for generation)."""
    _check_style(style)
    if style == "chat" and has_chat_template(tokenizer):
        messages = _messages(question, system_prompt, instruction)
        return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    return _plain_text(question, system_prompt, instruction)


def build_prompt_ids(
    tokenizer: Any,
    question: str,
    style: PromptStyle = "chat",
    system_prompt: str | None = None,
    instruction: str | None = None,
) -> list[int]:
    """Prompt token ids for `question` (plain Python ints).

    chat: apply_chat_template([system?, user], add_generation_prompt=True, tokenize=True),
    so the template's own special tokens (BOS etc.) are placed exactly once.
    plain: tokenizer(text) with add_special_tokens=True (adds BOS for Llama-style tokenizers,
    as the reference did; nothing for GPT-2-style ones)."""
    _check_style(style)
    if style == "chat" and has_chat_template(tokenizer):
        messages = _messages(question, system_prompt, instruction)
        return _as_id_list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    return _as_id_list(tokenizer(_plain_text(question, system_prompt, instruction), add_special_tokens=True))
