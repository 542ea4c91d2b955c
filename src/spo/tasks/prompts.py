"""Prompt formats: question (+ answer-format instruction) -> prompt token ids.

"chat"  the tokenizer's chat template with a generation prompt (instruct models); a tokenizer
        without one (base models) is an error (PromptFormatError) rather than a silent
        switch to "plain", which would train on prompts the config did not ask for.
"plain" a text template: by default "Problem:\\n{question}\\n\\nSolution:"; `task.prompt_template`
        names another (`rho1b_sft`, the reference's RhoMath SFT prompt with "[MATH_TASK] ",
        `qwen_math`, its R1-Distill-Qwen MATH prompt) or gives one.
The ids are built directly (tokenize=True), never by re-tokenising decoded text, so that the
sampler continues from exactly these tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

PromptStyle = Literal["chat", "plain"]
PLAIN_TEMPLATE = "Problem:\n{question}\n\nSolution:"

PROMPT_TEMPLATES: dict[str, str] = {
    "plain": PLAIN_TEMPLATE,
    # the RhoMath-1.1B SFT model's, for SFT and RL alike (reference:
    # configs/prompt_library/MATH_step_by_step_sft.jsonnet:2-5)
    "rho1b_sft": "[MATH_TASK] Problem:\n{question}\n\nSolution:",
    # DeepSeek-R1-Distill-Qwen's on MATH (reference: configs/prompt_library/qwen_MATH.jsonnet:2);
    # it opens with the BOS token as text
    "qwen_math": "<｜begin▁of▁sentence｜><｜User｜>Solve the following math problem efficiently and clearly.  "
                 "The last line of your response should be of the following format: 'Therefore, the final "
                 "answer is: $\\boxed{ANSWER}$. I hope it is correct' (without quotes) where ANSWER is just "
                 "the final number or expression that solves the problem. Think step by step before "
                 "answering.\n\n{question}<｜Assistant｜><think>\n",
}
"""Plain-format templates by name (`task.prompt_template`); any other value is itself a
template, with `{question}` where the question (and instruction) goes."""


def resolve_template(template: str | None) -> str:
    """The template text for a name or a template string (None: the plain format)."""
    text = PROMPT_TEMPLATES.get(template or "plain", template)
    if "{question}" not in text:
        raise ValueError(f"prompt template {template!r} is neither a known name ({', '.join(PROMPT_TEMPLATES)}) "
                         "nor a template with {question} in it")
    return text


class PromptFormatError(ValueError):
    """The prompt format asked for cannot be built with this tokenizer."""


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


def _plain_text(question: str, system_prompt: str | None, instruction: str | None,
                template: str | None = None) -> str:
    """Plain format (`template`, see `resolve_template`); a system prompt, if any, goes
    first as its own paragraph. Only `{question}` is filled: other braces are literal."""
    text = resolve_template(template).replace("{question}", user_message(question, instruction))
    return f"{system_prompt.strip()}\n\n{text}" if system_prompt and system_prompt.strip() else text


def _use_chat(tokenizer: Any, style: str) -> bool:
    """Whether to apply the chat template; a chat prompt without a template is an error."""
    if style not in ("chat", "plain"):
        raise ValueError(f"unknown prompt style {style!r}; expected 'chat' or 'plain'")
    if style == "chat" and not has_chat_template(tokenizer):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise PromptFormatError(f"task.prompt_format=chat, but the tokenizer {name!r} has no chat template; set "
                                "task.prompt_format=plain, or model.tokenizer to one that has a template")
    return style == "chat"


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
    template: str | None = None,
) -> str:
    """The prompt as text (for logs and previews; use `build_prompt_ids` for generation)."""
    if _use_chat(tokenizer, style):
        messages = _messages(question, system_prompt, instruction)
        return str(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    return _plain_text(question, system_prompt, instruction, template)


def build_prompt_ids(
    tokenizer: Any,
    question: str,
    style: PromptStyle = "chat",
    system_prompt: str | None = None,
    instruction: str | None = None,
    template: str | None = None,
) -> list[int]:
    """Prompt token ids for `question` (plain Python ints).

    chat: apply_chat_template([system?, user], add_generation_prompt=True, tokenize=True),
    so the template's own special tokens (BOS etc.) are placed exactly once.
    plain: tokenizer(text) with add_special_tokens=True (adds BOS for Llama-style tokenizers,
    as the reference did; nothing for GPT-2-style ones), unless the text already opens with
    the BOS token (the `qwen_math` template), which must not be doubled."""
    if _use_chat(tokenizer, style):
        messages = _messages(question, system_prompt, instruction)
        return _as_id_list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    text = _plain_text(question, system_prompt, instruction, template)
    bos = getattr(tokenizer, "bos_token", None)
    return _as_id_list(tokenizer(text, add_special_tokens=not (bos and text.startswith(bos))))
