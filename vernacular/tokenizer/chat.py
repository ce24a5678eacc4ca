"""The chat template: one Jinja string, rendered by transformers (`apply_chat_template`) and by us alike.

A chat renders as

    <|begin_of_text|><|system|>\nYou are ...<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\n

so a model generates the assistant turn and stops at `<|end|>`. We render the template with Jinja2's sandbox and the
same environment flags transformers uses, instead of re-implementing it in Python, so the two cannot drift apart.
"""

from __future__ import annotations

from vernacular.tokenizer import ASSISTANT, BOS, END

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown chat role: ' ~ message['role'] ~ ' (expected system, user or assistant)') }}"
    "{% endif %}"
    "{% if message['content'] is not string %}"
    "{{ raise_exception('chat message content must be a string') }}"
    "{% endif %}"
    "{{ '<|' ~ message['role'] ~ '|>\n' ~ message['content'] ~ '" + END + "\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + ASSISTANT + "\n' }}{% endif %}"
)


class ChatTemplateError(ValueError):
    pass


def _raise(message: str):
    raise ChatTemplateError(message)


_compiled = None


def _template():
    global _compiled
    if _compiled is None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        # transformers compiles chat templates with exactly these flags
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = _raise
        _compiled = env.from_string(CHAT_TEMPLATE)
    return _compiled


def render_chat(messages: list[dict], add_generation_prompt: bool = True) -> str:
    """`messages` as in the OpenAI API: [{"role": "system"|"user"|"assistant", "content": str}, ...]."""
    if not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) for m in messages):
        raise ChatTemplateError("messages must be a list of {'role': ..., 'content': ...} dicts")
    for m in messages:
        if "role" not in m or "content" not in m:
            raise ChatTemplateError(f"chat message without role or content: {m!r}")
    return _template().render(messages=list(messages), add_generation_prompt=add_generation_prompt, bos_token=BOS)
