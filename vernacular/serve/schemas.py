"""Request and response bodies of the OpenAI-compatible API (pydantic), which also make FastAPI's /openapi.json.

Field names, defaults and limits follow OpenAI's API reference, plus the vLLM extensions that lm-eval and other
clients use (`top_k`, `ignore_eos`, `repetition_penalty`, `min_tokens`, the /tokenize family). Unknown fields are
accepted and ignored, as OpenAI's server does, so newer clients keep working — except fields that would change the
meaning of the answer and that we do not implement (`UNSUPPORTED`): those are a 400 naming the field.

Every string anywhere in a body must be valid Unicode: JSON can spell a lone surrogate (`"\\ud800"`), which no
tokenizer can encode; it is a 400 naming the parameter (`TextError`), never a 500.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Fields of OpenAI's / vLLM's APIs that change what the answer means and that this server does not implement.
UNSUPPORTED = {
    "functions": "legacy function calling; use tools", "function_call": "legacy function calling; use tool_choice",
    "audio": "audio output", "modalities": "output modalities other than text", "prediction": "predicted outputs",
    "web_search_options": "web search", "reasoning_effort": "reasoning models", "reasoning": "reasoning models",
    "verbosity": "verbosity control", "guided_json": "vLLM guided decoding; use response_format",
    "guided_regex": "vLLM guided decoding", "guided_choice": "vLLM guided decoding",
    "guided_grammar": "vLLM guided decoding", "structured_outputs": "vLLM structured outputs; use response_format",
    "previous_response_id": "stored responses (this server is stateless: send the whole input)",
    "conversation": "stored conversations (this server is stateless)", "background": "background responses",
    "prompt": "stored prompt templates", "logits_processors": "custom logits processors",
}  # fmt: skip


class TextError(ValueError):
    """A string that is not valid Unicode (a lone surrogate); `param` is its path in the body."""

    def __init__(self, param: str):
        super().__init__(f"{param}: contains a lone UTF-16 surrogate (e.g. \\ud800), which is not valid Unicode text")
        self.param = param


def _find_bad_text(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        if (bad := _find_bad_text(k, path)) is not None or (bad := _find_bad_text(v, f"{path}.{k}" if path else str(k))):
            return bad
    return None


class _Body(BaseModel):
    """Base of request bodies: refuses invalid Unicode anywhere in it, naming where."""

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        if (bad := _find_bad_text(data, "")) is not None:
            raise TextError(bad or "body")
        return data

    def unsupported_field(self) -> str | None:
        """The first field of UNSUPPORTED this body sets to a non-empty value."""
        for name, value in (self.model_extra or {}).items():
            if name in UNSUPPORTED and value not in (None, False, "", [], {}):
                return name
        return None

# OpenAI allows 4 stop strings; lm-eval's generation tasks send their `until` list plus EOS, often more, so we are
# as lenient as vLLM within reason.
MAX_STOP = 32


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class StreamOptions(BaseModel):
    include_usage: bool = False


class JSONSchemaFormat(BaseModel):
    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`: free text, any JSON object, or JSON matching a schema (enforced by a grammar)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class _GenerationRequest(_Body):
    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, description="must be the served model's id (see /v1/models) when given")
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="vLLM extension; 0 disables top-k")
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOP} strings; the text ends before the first")
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = Field(False, description="vLLM extension: keep generating past end-of-text")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=2.0, description="vLLM extension; 1 disables it")
    logit_bias: dict[str, float] | None = Field(None, description="token id (as a string) -> bias in [-100, 100]")
    min_tokens: int = Field(0, ge=0, description="vLLM extension: no end of text before this many tokens")
    response_format: ResponseFormat | None = None
    user: str | None = None

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for k, b in (v or {}).items():
            if not k.strip().lstrip("-").isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {k!r}")
            if not -100 <= b <= 100:
                raise ValueError(f"logit_bias values must be between -100 and 100, got {b}")
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        ..., description="a string, a list of strings, a list of token ids, or a list of token-id lists"
    )
    max_tokens: int | None = Field(16, ge=0)
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(..., description="the arguments as a JSON object, serialised")


class ToolCall(BaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""

    def for_template(self) -> dict[str, Any]:
        """The message as the chat template reads it (content joined, tool calls as OpenAI sends them)."""
        m: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            m["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            m["tool_call_id"] = self.tool_call_id
        return m


class FunctionDefinition(BaseModel):
    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedToolChoice(BaseModel):
    class _Name(BaseModel):
        name: str

    type: Literal["function"]
    function: _Name


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    add_generation_prompt: bool = True
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True


# ---------------------------------------------------------------- responses
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None
    refusal: list[ChatTokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "vernacular"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeRequest(_Body):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = False
    tools: list[Tool] | None = None


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


# ---------------------------------------------------------------- the Responses API (stateless)
class ResponseInputText(BaseModel):
    type: Literal["input_text", "output_text", "text"]
    text: str


class ResponseInputMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ResponseInputText]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ResponseTextFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseTextConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: ResponseTextFormat | None = None


class ResponsesRequest(_Body):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[ResponseInputMessage]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stream: bool = False
    store: bool = False
    text: ResponseTextConfig | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    seed: int | None = None  # extension (OpenAI's Responses API has none); makes sampling reproducible



class DetokenizeRequest(_Body):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class Health(BaseModel):
    status: str
    model: str
    waiting: int
    running: int
    details: dict[str, Any] | None = None
