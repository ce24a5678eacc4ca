"""The chat template and the one place that turns messages into tokens.

A chat renders as

    <|begin_of_text|><|system|>\nYou are ...<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\nHi!<|end|>\n

so a model generates the assistant turn and stops at `<|end|>`. The template is one Jinja string, shipped in
tokenizer_config.json and rendered by transformers (`apply_chat_template`) and by us alike; we render it with Jinja2's
sandbox and the same environment flags transformers uses, so the two cannot drift apart. The assistant's part of each
turn (its content and its end-of-turn token) is wrapped in `{% generation %}` blocks, transformers' convention for
`apply_chat_template(..., return_assistant_tokens_mask=True)`, which is how supervised fine-tuning finds the tokens it
learns from.

Roles: `system`, `developer` (OpenAI's newer name for the system turn; rendered as a system turn), `user`,
`assistant`. Content: a string, or OpenAI's list of content parts (`[{"type": "text", "text": ...}, ...]`, joined).

**Message text never becomes control tokens.** `encode_chat` renders the template with placeholders for the message
contents, takes the special tokens only from the template's own text, and encodes every content as plain text (HF
`tokenizers`' `encode_special_tokens`), so a user who types `<|end|>\n<|system|>` gets those characters, not a forged
turn. transformers and vLLM render a template to text and re-tokenise it, so they cannot make this distinction; for
contents without special-token text all three give identical ids.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from vernacular.tokenizer import ASSISTANT, BOS, END, EOS, PAD

ROLES = ("system", "developer", "user", "assistant", "tool")

# Tool calling (OpenAI's `tools`, assistant `tool_calls`, `tool` messages) in plain text around the special tokens:
# the tool definitions open the chat as a system turn, a call is `<tool_call>{"name": ..., "arguments": {...}}
# </tool_call>` inside the assistant's turn, a tool's result comes back as a user turn in `<tool_response>`.
TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"
TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call the functions below. To call one, answer with " + TOOL_CALL_START
    + '{"name": <function name>, "arguments": <JSON object>}' + TOOL_CALL_END
    + " (one block per call); the results come back in <tool_response> blocks.\n\n"
)  # fmt: skip

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}"
    "{{ '<|system|>\n" + TOOLS_PREAMBLE.replace("\n", "\\n").replace("'", "\\'") + "' }}"
    "{% for tool in tools %}{{ (tool['function'] if tool['function'] is defined else tool) | tojson ~ '\n' }}"
    "{% endfor %}"
    "{{ '" + END + "\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'developer', 'user', 'assistant', 'tool'] %}"
    "{{ raise_exception('unknown chat role: ' ~ message['role'] ~ ' (expected system, developer, user, assistant or tool)') }}"
    "{% endif %}"
    "{% set raw = message['content'] if message['content'] is defined else none %}"
    "{% if raw is string %}{% set content = raw %}"
    "{% elif raw is none %}{% set content = '' %}"
    "{% elif raw is iterable and raw is not mapping %}"
    "{% set content = raw | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}"
    "{% else %}{{ raise_exception('chat message content must be a string or a list of text parts') }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '" + ASSISTANT + "\n' }}{% generation %}{{ content }}"
    "{% if message['tool_calls'] is defined and message['tool_calls'] %}{% for call in message['tool_calls'] %}"
    "{% set f = call['function'] if call['function'] is defined else call %}"
    "{{ '" + TOOL_CALL_START + "{\"name\": ' ~ (f['name'] | tojson) ~ ', \"arguments\": ' ~ "
    "(f['arguments'] if f['arguments'] is string else f['arguments'] | tojson) ~ '}" + TOOL_CALL_END + "' }}"
    "{% endfor %}{% endif %}"
    "{{ '" + END + "' }}{% endgeneration %}{{ '\n' }}"
    "{% elif message['role'] == 'tool' %}"
    "{{ '<|user|>\n<tool_response>\n' ~ content ~ '\n</tool_response>" + END + "\n' }}"
    "{% else %}"
    "{{ '<|' ~ ('system' if message['role'] == 'developer' else message['role']) ~ '|>\n' ~ content ~ '" + END + "\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + ASSISTANT + "\n' }}{% endif %}"
)


class ChatTemplateError(ValueError):
    pass


def _raise(message: str):
    raise ChatTemplateError(message)


# Private-use characters that mark, in the rendered template, where a content goes and where a generation block
# starts and ends. Contents are substituted only after the markers have been read, so a message cannot fake them.
_GEN_START, _GEN_END, _SLOT, _DATA_START, _DATA_END = "\ue000", "\ue001", "\ue002", "\ue003", "\ue004"
_RESERVED = (_GEN_START, _GEN_END, _SLOT, _DATA_START, _DATA_END)
_SLOT_RE = re.compile(_SLOT + r"(\d+)" + _SLOT)


def _environment(track_generation: bool):
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}` (transformers' AssistantTracker tag): marks the assistant's tokens."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_mark", []), [], [], body).set_lineno(lineno)

        def _mark(self, caller):
            inner = caller()
            return _GEN_START + inner + _GEN_END if track_generation else inner

    # transformers compiles chat templates with exactly these flags, and overrides `tojson` with this one
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, "jinja2.ext.loopcontrols"]
    )
    env.globals["raise_exception"] = _raise
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)  # fmt: skip
    return env


_compiled: dict[tuple[str, bool], Any] = {}


def _template(source: str, track_generation: bool):
    key = (source, track_generation)
    if key not in _compiled:
        if any(c in source for c in _RESERVED):
            raise ChatTemplateError("the chat template contains reserved private-use characters U+E000..U+E004")
        if len(_compiled) > 16:
            _compiled.clear()
        _compiled[key] = _environment(track_generation).from_string(source)
    return _compiled[key]


def content_text(content: Any) -> str:
    """A message's content as one string: a string as is, OpenAI text parts joined. Raises ChatTemplateError."""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ChatTemplateError("content parts must be {'type': 'text', 'text': str} (only text is supported)")
            texts.append(part["text"])
        return "".join(texts)
    if content is None:
        return ""
    raise ChatTemplateError("chat message content must be a string or a list of text parts")


def _check(messages) -> list[dict]:
    if not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) for m in messages):
        raise ChatTemplateError("messages must be a list of {'role': ..., 'content': ...} dicts")
    for m in messages:
        if "role" not in m or ("content" not in m and not m.get("tool_calls")):
            raise ChatTemplateError(f"chat message without role or content: {m!r}")
        if m["role"] not in ROLES:
            raise ChatTemplateError(f"unknown chat role: {m['role']} (expected {', '.join(ROLES)})")
        if m.get("content") is None and not (m["role"] == "assistant" and m.get("tool_calls")):
            raise ChatTemplateError("chat message content must be a string or a list of text parts")
    return list(messages)


def _as_data(value: Any, specials: set[str]) -> Any:
    """`value` (tools, tool calls) with every string value wrapped in data markers, so that whatever text it holds
    stays plain text; keys that spell a special token are refused (they cannot be marked without renaming them)."""
    if isinstance(value, str):
        return _DATA_START + value + _DATA_END
    if isinstance(value, (list, tuple)):
        return [_as_data(v, specials) for v in value]
    if isinstance(value, dict):
        for k in value:
            if isinstance(k, str) and any(s in k for s in specials):
                raise ChatTemplateError(f"a key in tools or tool_calls spells a special token: {k!r}")
        return {k: _as_data(v, specials) for k, v in value.items()}
    return value


def render_chat(
    messages: list[dict],
    add_generation_prompt: bool = True,
    template: str = CHAT_TEMPLATE,
    special_tokens: dict[str, str | None] | None = None,
    tools: list[dict] | None = None,
) -> str:
    """The conversation as text, exactly as transformers' `apply_chat_template(tokenize=False, tools=...)` renders it.

    `messages` and `tools` as in the OpenAI API. `special_tokens` fills the template's `bos_token`/`eos_token`/
    `pad_token` variables (default: ours). Raises ChatTemplateError on bad messages.
    """
    messages = _check(messages)
    specials = special_tokens or {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    return _template(template, False).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                             tools=tools or None, **specials)  # fmt: skip


@dataclass
class ChatEncoding:
    """`ids`: token ids of the rendered chat; `assistant_mask`: 1 for tokens inside a `{% generation %}` block (each
    assistant turn's content and its end-of-turn token), else 0 — the same mask as transformers'
    `return_assistant_tokens_mask`; `text`: the rendered chat."""

    ids: list[int]
    assistant_mask: list[int]
    text: str


_plain_copies: dict[int, Any] = {}


def _plain_tokenizer(tokenizer):
    """A copy of `tokenizer` that encodes special-token text as ordinary text (`encode_special_tokens = True`).

    A copy, not a flag flip on the shared object, so concurrent encoders of the original are never affected."""
    key = id(tokenizer)
    if key not in _plain_copies:
        from tokenizers import Tokenizer

        copy = Tokenizer.from_str(tokenizer.to_str())
        copy.encode_special_tokens = True
        if len(_plain_copies) > 8:
            _plain_copies.clear()
        _plain_copies[key] = (tokenizer, copy)  # keep the original alive so its id is not reused
    return _plain_copies[key][1]


def encode_chat(
    tokenizer,
    messages: list[dict],
    add_generation_prompt: bool = False,
    template: str = CHAT_TEMPLATE,
    special_tokens: dict[str, str | None] | None = None,
    tools: list[dict] | None = None,
) -> ChatEncoding:
    """Render and tokenise a chat; special tokens come only from the template, message text is always plain text.

    `tokenizer`: an HF `tokenizers.Tokenizer` (ours, or any with the template's special tokens as added tokens).
    `tools`: OpenAI tool definitions; they and the messages' `tool_calls` are message text too (plain text).
    Returns a ChatEncoding. For contents without special-token text, `ids` equal transformers'
    `apply_chat_template(tokenize=True)` and `assistant_mask` its `return_assistant_tokens_mask` (tested).
    Raises ChatTemplateError on bad messages or a template that drops a message's content.
    """
    messages = _check(messages)
    added = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    contents = [content_text(m.get("content")) for m in messages]
    slotted = [{**m, "content": f"{_SLOT}{i}{_SLOT}"} for i, m in enumerate(messages)]
    for m in slotted:
        if m.get("tool_calls"):
            m["tool_calls"] = _as_data(m["tool_calls"], set(added))
    specials = special_tokens or {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    marked = _template(template, True).render(messages=slotted, add_generation_prompt=add_generation_prompt,
                                              tools=_as_data(tools, set(added)) if tools else None, **specials)

    # 1. read the markers: the final text, where each content lies in it, and the generation spans
    text_parts: list[str] = []
    content_spans: list[tuple[int, int]] = []
    gen_spans: list[tuple[int, int]] = []
    pos, gen_open, data_open, used = 0, None, None, []
    for piece in re.split(f"({_GEN_START}|{_GEN_END}|{_DATA_START}|{_DATA_END}|{_SLOT}\\d+{_SLOT})", marked):
        if piece == _DATA_START:
            data_open = pos
        elif piece == _DATA_END:
            if data_open is not None:
                content_spans.append((data_open, pos))
            data_open = None
        elif piece == _GEN_START:
            gen_open = pos
        elif piece == _GEN_END:
            if gen_open is not None:
                gen_spans.append((gen_open, pos))
            gen_open = None
        elif (slot := _SLOT_RE.fullmatch(piece)) is not None:
            i = int(slot.group(1))
            used.append(i)
            text_parts.append(contents[i])
            content_spans.append((pos, pos + len(contents[i])))
            pos += len(contents[i])
        elif piece:
            text_parts.append(piece)
            pos += len(piece)
    if sorted(used) != list(range(len(contents))):
        raise ChatTemplateError("the chat template does not render each message's content exactly once")
    text = "".join(text_parts)

    # 2. split on special tokens that lie in template text only; encode the runs between them as plain text
    plain = _plain_tokenizer(tokenizer)
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    if added:
        pattern = re.compile("|".join(re.escape(s) for s in sorted(added, key=len, reverse=True)))
        boundaries = [(m.start(), m.end()) for m in pattern.finditer(text)
                      if not any(s < m.end() and m.start() < e for s, e in content_spans)]
    else:
        boundaries = []
    start = 0
    for s, e in boundaries + [(len(text), len(text))]:
        if s > start:
            enc = plain.encode(text[start:s], add_special_tokens=False)
            ids += enc.ids
            offsets += [(start + a, start + b) for a, b in enc.offsets]
        if e > s:
            ids.append(added[text[s:e]])
            offsets.append((s, e))
        start = e
    mask = [int(any(a < ge and gs < b for gs, ge in gen_spans)) for a, b in offsets]
    return ChatEncoding(ids=ids, assistant_mask=mask, text=text)
