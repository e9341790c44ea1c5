"""Pydantic models of every request and response body of the HTTP server.

Request models are *strict* (``"5"`` is not an integer, ``true`` is not a
number) and ignore fields they do not know, so every OpenAI client works and
every wrong type is answered 400 naming the field. Fields marked "extension"
are not in OpenAI's API (llama.cpp's server has them too).
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "CompletionRequest", "ChatCompletionRequest", "ChatMessage", "ContentPart", "ImageURL", "InputAudio", "ToolSpec", "FunctionSpec",
    "NamedToolChoice", "ResponseFormat", "JSONSchemaFormat", "StreamOptions", "EmbeddingRequest",
    "TokenizeRequest", "DetokenizeRequest",
    "ModelCard", "ModelList", "Usage", "PromptTokensDetails", "CompletionLogprobs", "CompletionChoice",
    "CompletionResponse", "ToolCallFunction", "ToolCall", "AssistantMessage", "TopLogprob",
    "ChatTokenLogprob", "ChatLogprobs", "ChatChoice", "ChatCompletionResponse", "ToolCallDelta",
    "ChatDelta", "ChatChunkChoice", "ChatCompletionChunk", "Embedding", "EmbeddingUsage",
    "EmbeddingResponse", "TokenPiece", "TokenizeResponse", "DetokenizeResponse", "HealthResponse",
    "ErrorDetail", "ErrorResponse", "UNION_MEMBER_NAMES", "NativeCompletionRequest", "InfillRequest",
    "InfillChunk",
    "SlotActionRequest",
    "RerankRequest",
]

MAX_STOP = 16  # stop strings per request
MAX_LOGPROBS = 20  # top logprobs per token


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


# ---------------------------------------------------------------------------
# shared request parts
# ---------------------------------------------------------------------------
class StreamOptions(_Request):
    include_usage: bool = False


class JSONSchemaFormat(_Request):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Request):
    """``{"type": "text" | "json_object" | "json_schema", "json_schema": {...}}``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # llama-server's shorthand

    @model_validator(mode="after")
    def _needs_schema(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None and self.schema_ is None:
            raise ValueError("response_format of type 'json_schema' needs a 'json_schema' object "
                             "with a 'schema'")
        return self


class _Sampling(_Request):
    """Sampling fields shared by completions and chat completions."""

    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=100)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # extensions
    top_k: int | None = Field(None, ge=0, description="extension: keep the k most likely tokens (0: all)")
    min_p: float | None = Field(None, ge=0, le=1, description="extension: min-p sampling")
    repeat_penalty: float | None = Field(None, gt=0, description="extension: repetition penalty")
    grammar: str | None = Field(None, description="extension: a GBNF grammar constraining the output")
    response_format: ResponseFormat | None = None
    lora: list[Any] | None = Field(None, description="extension: LoRA scales, [{\"id\": 0, \"scale\": 0.5}]")

    @model_validator(mode="after")
    def _check_shared(self) -> _Sampling:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"stop: at most {MAX_STOP} stop strings, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop: stop strings must not be empty")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when stream is true")
        if self.grammar is not None and self.response_format is not None \
                and self.response_format.type != "text":
            raise ValueError("grammar: give grammar or response_format, not both")
        return self


# ---------------------------------------------------------------------------
# /v1/completions
# ---------------------------------------------------------------------------
class CompletionRequest(_Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]] = Field(
        description="a string, a list of token ids, or a list of either (one completion each)")
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt: must not be an empty list")
        if self.suffix:
            raise ValueError("suffix: not supported")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of: only best_of == n is supported")
        return self


# ---------------------------------------------------------------------------
# /v1/chat/completions
# ---------------------------------------------------------------------------
class ImageURL(_Request):
    url: str = Field(min_length=1)  # a data: URL (base64 image) or a path on the server's disk
    detail: str | None = None  # accepted, not used


class InputAudio(_Request):
    data: str = Field(min_length=1)  # base64
    format: str = "wav"


class ContentPart(_Request):
    """A part of a message's content: ``text``, ``image_url`` or ``input_audio``
    (media need a server started with ``--mmproj``)."""

    type: Literal["text", "image_url", "input_audio"]
    text: str | None = None
    image_url: ImageURL | None = None
    input_audio: InputAudio | None = None

    @model_validator(mode="after")
    def _has_payload(self) -> ContentPart:
        if getattr(self, self.type) is None:
            raise ValueError(f"a content part of type {self.type!r} needs {self.type!r}")
        return self


class ToolCallFunction(BaseModel):
    name: str
    arguments: str  # a JSON object, as a string (OpenAI's format)


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: ToolCallFunction


class _ToolCallIn(_Request):
    id: str | None = None
    type: Literal["function"] = "function"
    function: _FunctionCallIn


class _FunctionCallIn(_Request):
    name: str
    arguments: Union[str, dict[str, Any]]


_ToolCallIn.model_rebuild()


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[ContentPart], None] = None
    name: str | None = None
    tool_calls: list[_ToolCallIn] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = Field(None, description="extension: an assistant message's thoughts "
                                                             "(llama-server's field)")

    @model_validator(mode="after")
    def _check(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError(f"content: a {self.role} message needs content")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("tool_calls: only assistant messages carry tool calls")
        if self.reasoning_content is not None and self.role != "assistant":
            raise ValueError("reasoning_content: only assistant messages carry reasoning_content")
        return self

    def text(self) -> str:
        """The message's text (the text parts of a list, joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content)

    def has_media(self) -> bool:
        return isinstance(self.content, list) and any(p.type != "text" for p in self.content)

    def parts(self) -> list[dict[str, Any]]:
        """The content as OpenAI-style part dicts (for :meth:`LLM.submit_chat`)."""
        if not isinstance(self.content, list):
            return [{"type": "text", "text": self.text()}]
        return [p.model_dump(exclude_none=True) for p in self.content]


class FunctionSpec(_Request):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolSpec(_Request):
    type: Literal["function"]
    function: FunctionSpec


class _NamedFunction(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: _NamedFunction


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[ToolSpec] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: bool | None = None
    # llama-server's extensions
    chat_template_kwargs: dict[str, Any] | None = None
    reasoning_format: Literal["none", "auto", "deepseek", "deepseek-legacy"] | None = None
    reasoning_effort: str | None = None
    add_generation_prompt: bool = Field(True, description="extension: end the prompt with the assistant's "
                                                             "turn (false with continue_final_message)")
    continue_final_message: Union[bool, Literal["content", "reasoning_content"], None] = Field(
        None, description="extension: continue the final assistant message (true: its content, or its "
                          "reasoning_content when it has only that); needs add_generation_prompt false. "
                          "A final assistant message is continued anyway (llama-server's prefill)")
    timings_per_token: bool = Field(False, description="extension: llama-server's timings on every streamed "
                                                       "event (the last one has them anyway)")
    return_progress: bool = Field(False, description="extension: llama-server's prompt_progress events while "
                                  "a streamed prompt is evaluated")
    verbose: bool = Field(False, description="extension: llama-server's __verbose, the native /completion "
                                             "body of the request (prompt, generation_settings, ...)")
    json_schema: dict[str, Any] | None = Field(None, description="extension: llama-server's shorthand for "
                                                                "a json_schema response_format")

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: needs logprobs to be true")
        if self.json_schema is not None and (self.grammar is not None or (
                self.response_format is not None and self.response_format.type != "text")):
            raise ValueError("json_schema: give json_schema, response_format or grammar, not two")
        if self.tools is not None:
            names = [t.function.name for t in self.tools]
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"tools: duplicate function names {sorted(dup)}")
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise ValueError("tool_choice: needs tools")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tools is not None and \
                self.tool_choice.function.name not in {t.function.name for t in self.tools}:
            raise ValueError(f"tool_choice: no tool named {self.tool_choice.function.name!r}")
        return self


# ---------------------------------------------------------------------------
# /v1/embeddings, /tokenize, /detokenize
# ---------------------------------------------------------------------------
class EmbeddingRequest(_Request):
    """``input``: a string, token ids, ids and strings mixed, ``{"content": [parts]}``,
    ``{"prompt_string": ...}``, or a list of those (checked by the route);
    ``content``: llama-server's name for it (answered in its native shape)."""

    input: Union[str, list[Any], dict[str, Any], None] = None
    content: Union[str, list[Any], dict[str, Any], None] = Field(
        None, description="extension: llama-server's input field (native response shape)")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @model_validator(mode="after")
    def _check(self) -> EmbeddingRequest:
        if self.input is None and self.content is None:
            raise ValueError("input: field required (or llama-server's content)")
        return self


class TokenizeRequest(_Request):
    content: str
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(_Request):
    tokens: list[int]


# ---------------------------------------------------------------------------
# responses
# ---------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "cortex-llama"
    aliases: list[str] = []  # llama-server's --alias names
    tags: list[str] = []  # llama-server's --tags
    meta: dict[str, Any] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(BaseModel):
    """The body of ``/v1/completions``; each streamed chunk has the same shape."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = None  # llama-server's field for a model's thoughts
    tool_calls: list[ToolCall] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChatLogprobs | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage
    timings: dict[str, Any] | None = None  # llama-server's (its /completion timings)


class ToolCallFunctionDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ToolCallFunctionDelta | None = None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ApplyTemplateResponse(BaseModel):
    prompt: str


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    """One ``data:`` event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    timings: dict[str, Any] | None = None  # llama-server's: on the last event (every one with timings_per_token)


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str]  # floats, or base64 of little-endian float32


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class TokenPiece(BaseModel):
    id: int
    piece: str


class TokenizeResponse(BaseModel):
    tokens: Union[list[int], list[TokenPiece]]


class DetokenizeResponse(BaseModel):
    content: str


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    slots_total: int
    slots_busy: int | None = None
    queue_depth: int | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# names pydantic puts into an error's location for a member of a union: not fields
UNION_MEMBER_NAMES = frozenset({
    "str", "int", "float", "bool", "dict", "list", "none", "NamedToolChoice", "ContentPart",
    "JSONSchemaFormat", "ResponseFormat", "StreamOptions", "ResponsesToolChoice",
})


# the error answers of a route, for its OpenAPI ``responses``
ERROR_RESPONSES: dict[Union[int, str], dict[str, Any]] = {
    s: {"model": ErrorResponse} for s in (400, 401, 403, 404, 413, 415, 503)}


# ---------------------------------------------------------------------------
# llama-server's native /completion
# ---------------------------------------------------------------------------
class NativeCompletionRequest(_Request):
    """llama-server's ``/completion`` body. ``prompt``: a string, token ids, a mix of
    both in one list, ``{"prompt_string": ...}``, or a list of those (one answer each)."""

    prompt: Union[str, list[Any], dict[str, Any]]
    n_predict: int | None = Field(None, ge=-1, description="tokens to generate (-1: until the context is full)")
    max_tokens: int | None = Field(None, ge=-1, description="n_predict's other name")
    temperature: float | None = Field(None, ge=0, le=100)
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    min_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0)
    repeat_last_n: int | None = Field(None, ge=-1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, description="-1: a random seed")
    stop: Union[str, list[str], None] = None
    stream: bool = False
    cache_prompt: bool = True
    n_probs: int = Field(0, ge=0, le=MAX_LOGPROBS)
    post_sampling_probs: bool = False
    return_tokens: bool = False
    ignore_eos: bool = False
    logit_bias: Union[list[list[Any]], dict[str, Any], None] = None
    timings_per_token: bool = False
    return_progress: bool = False
    response_fields: list[str] | None = None
    grammar: str | None = None
    json_schema: dict[str, Any] | None = None
    id_slot: int = -1
    lora: list[Any] | None = None
    model: str | None = None

    @model_validator(mode="after")
    def _check(self) -> NativeCompletionRequest:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"stop: at most {MAX_STOP} stop strings, got {len(stops)}")
        if self.grammar is not None and self.json_schema is not None:
            raise ValueError("grammar: give grammar or json_schema, not both")
        if self.seed is not None and self.seed < -1:
            raise ValueError(f"seed: {self.seed} is not -1 (random) or a seed >= 0")
        return self


class RerankRequest(_Request):
    """llama-server's ``/rerank`` body: Jina's (``documents``) or TEI's (``texts``)."""

    query: str | None = None
    documents: list[str] | None = None
    texts: list[str] | None = None
    top_n: int | None = Field(None, ge=0)
    return_documents: bool = False
    return_text: bool = False
    model: str | None = None


class SlotActionRequest(_Request):
    """The body of ``/slots/{id}?action=save|restore``: the file in ``--slot-save-path``."""

    filename: str | None = None


class InfillChunk(_Request):
    """One file of ``/infill``'s ``input_extra``."""

    text: str
    filename: str = "tmp"


class InfillRequest(NativeCompletionRequest):
    """llama-server's ``/infill`` body: every ``/completion`` field, the code around
    the gap (``input_prefix``, ``input_suffix``: strings, or token ids and strings
    mixed), other files (``input_extra``) and ``prompt``, the start of the middle."""

    prompt: str = ""
    input_prefix: Union[str, list[Any]]
    input_suffix: Union[str, list[Any]]
    input_extra: list[InfillChunk] = Field(default_factory=list)
