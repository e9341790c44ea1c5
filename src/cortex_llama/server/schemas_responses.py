"""Request bodies of OpenAI's Responses API (``POST /v1/responses``).

Strict like :mod:`.schemas` (wrong types are 400 naming the field), unknown
fields ignored. ``input`` items are checked field by field when they are
translated to chat messages (:mod:`.routes_responses`), so that an error names
``input[i]....``. Fields marked "extension" are llama-server's sampling fields.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ResponsesRequest", "ResponsesTool", "ResponsesToolChoice", "TextConfig", "TextFormat",
           "ReasoningConfig"]


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


class ResponsesTool(_Request):
    """A function tool (the only kind served)."""

    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ResponsesToolChoice(_Request):
    type: Literal["function"]
    name: str


class TextFormat(_Request):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _needs_schema(self) -> TextFormat:
        if self.type == "json_schema" and self.schema_ is None:
            raise ValueError("schema: a format of type 'json_schema' needs a 'schema'")
        return self


class TextConfig(_Request):
    format: TextFormat | None = None


class ReasoningConfig(_Request):
    effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    summary: str | None = None  # accepted, not used


class ResponsesRequest(_Request):
    model: str | None = None
    input: Union[str, list[dict[str, Any]]]
    instructions: str | None = None
    tools: list[ResponsesTool] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], ResponsesToolChoice, None] = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    previous_response_id: str | None = None
    store: bool = True
    stream: bool = False
    metadata: dict[str, Any] | None = None
    user: str | None = None
    # extensions
    top_k: int | None = Field(None, ge=0, description="extension: keep the k most likely tokens (0: all)")
    min_p: float | None = Field(None, ge=0, le=1, description="extension: min-p sampling")
    seed: int | None = Field(None, description="extension: the sampling seed")
    grammar: str | None = Field(None, description="extension: a GBNF grammar constraining the output")
    timings_per_token: bool = Field(False, description="extension: llama-server's timings on each delta event")
    return_progress: bool = Field(False, description="extension: llama-server's prompt_progress on "
                                                     "response.in_progress events while the prompt is read")

    @model_validator(mode="after")
    def _check(self) -> ResponsesRequest:
        if isinstance(self.input, str) and not self.input:
            raise ValueError("input: must not be empty")
        if isinstance(self.input, list) and not self.input and self.previous_response_id is None:
            raise ValueError("input: must not be an empty list")
        return self
