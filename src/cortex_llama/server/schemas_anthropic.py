"""Request bodies of Anthropic's Messages API (``POST /v1/messages`` and
``/v1/messages/count_tokens``).

Strict like :mod:`.schemas`, unknown fields ignored. ``messages`` content
blocks are checked field by field when translated to chat messages
(:mod:`.routes_anthropic`), so that an error names ``messages[i].content[j]...``.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["AnthropicTool", "AnthropicToolChoice", "ThinkingConfig", "OutputFormat", "OutputConfig",
           "CountTokensRequest", "MessagesRequest"]


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class AnthropicTool(_Request):
    """A client tool: ``name``, ``description``, ``input_schema`` (a JSON schema)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.-]+$")
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None


class AnthropicToolChoice(_Request):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None

    @model_validator(mode="after")
    def _named(self) -> AnthropicToolChoice:
        if self.type == "tool" and not self.name:
            raise ValueError("name: a tool_choice of type 'tool' needs the tool's name")
        return self


class ThinkingConfig(_Request):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(None, ge=0)  # accepted, not enforced


class OutputFormat(_Request):
    """Structured output: ``{"type": "json_schema", "schema": {...}}``."""

    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Request):
    format: OutputFormat | None = None  # (effort: accepted, not used)


class CountTokensRequest(_Request):
    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    system: Union[str, list[dict[str, Any]], None] = None
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None
    thinking: ThinkingConfig | None = None

    @model_validator(mode="after")
    def _check_tools(self) -> CountTokensRequest:
        if self.tools:
            names = [t.name for t in self.tools]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"tools: duplicate tool names {dup}")
        if self.tool_choice is not None and self.tool_choice.type in ("any", "tool") and not self.tools:
            raise ValueError("tool_choice: needs tools")
        if self.tool_choice is not None and self.tool_choice.type == "tool" and \
                self.tool_choice.name not in {t.name for t in self.tools or ()}:
            raise ValueError(f"tool_choice: no tool named {self.tool_choice.name!r}")
        return self


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = Field(None, max_length=16)
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    stream: bool = False
    metadata: dict[str, Any] | None = None
    # extensions (llama-server's sampling fields)
    min_p: float | None = Field(None, ge=0, le=1, description="extension: min-p sampling")
    seed: int | None = Field(None, description="extension: the sampling seed")
    grammar: str | None = Field(None, description="extension: a GBNF grammar constraining the output")
    output_config: OutputConfig | None = None
    output_format: OutputFormat | None = Field(None, description="the structured-outputs beta's name for "
                                                                 "output_config.format")

    @model_validator(mode="after")
    def _check_stops(self) -> MessagesRequest:
        if any(not s for s in self.stop_sequences or ()):
            raise ValueError("stop_sequences: stop sequences must not be empty")
        return self
