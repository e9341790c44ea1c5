"""Chat, the :class:`LLM` methods that answer a conversation through llama.cpp's
chat layer (see :mod:`cortex_llama.conversation`): its plan and prompt, and
chat, stream_chat and their asyncio forms."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import replace
from typing import Any, Mapping, Sequence

from .chat import ChatTemplates
from .conversation import (AsyncChatStream, ChatCompletion, ChatPlan, ChatStream, Messages, finish_chat,
                           plan_chat, split_options)
from .gen.params import GenerationParams
from .gen.request import Request
from .llm_requests import UsesRequests, merged_params, wait_for

__all__ = ["ChatMethods"]


class ChatMethods(UsesRequests):
    """The chat methods of :class:`~cortex_llama.llm.LLM` (a base class of it; see
    :class:`UsesRequests`). They render with :meth:`chat_templates`, which LLM
    implements (it caches the templates per load)."""

    @abstractmethod
    def chat_templates(self) -> ChatTemplates:
        """The loaded model's chat templates (LLM.chat_templates)."""

    def chat_plan(self, messages: Messages, **options: Any) -> ChatPlan:
        """How ``messages`` render with chat ``options`` (:class:`ChatOptions` fields):
        the prompt, grammar, stops and output parser llama.cpp's chat layer gives.

        Raises :class:`ChatRequestError` naming a bad message, tool or option,
        :class:`TemplateError` and :class:`MediaError`.
        """
        opts, rest = split_options(options)
        if rest:
            raise TypeError(f"unknown chat options: {sorted(rest)}")
        return plan_chat(self.chat_templates(), messages, opts, projector=self.requests.projector)

    def chat_prompt(self, messages: Messages, add_generation_prompt: bool = True,
                    tools: Sequence[Any] | None = None, **options: Any) -> str:
        """The prompt text ``messages`` render to, exactly as llama-server's
        ``/apply-template`` renders it (``options``: :class:`ChatOptions` fields).

        Raises like :meth:`chat_plan`.
        """
        return self.chat_plan(messages, add_generation_prompt=add_generation_prompt, tools=tools,
                              **options).prompt.prompt

    def chat_tokens(self, messages: Messages, tools: Sequence[Any] | None = None, **options: Any) -> list[int]:
        """The tokens of :meth:`chat_prompt`."""
        text = self.chat_prompt(messages, tools=tools, **options)
        return self.requests.text_tokens(text)

    def _chat_request(self, messages: Messages, params: GenerationParams | None,
                      overrides: Mapping[str, Any]) -> tuple[Request, ChatPlan]:
        opts, rest = split_options(overrides)
        p = merged_params(params, rest)
        plan = plan_chat(self.chat_templates(), messages, opts, json_schema=p.json_schema,
                         grammar=p.grammar, projector=self.requests.projector)
        if plan.stops:
            p = replace(p, stop=tuple(dict.fromkeys((*p.stop, *plan.stops))))
        text = plan.prompt.prompt
        requests = self.requests
        if plan.media:
            req = requests.media_request(text, plan.media, p, plan)
        else:
            req = requests.request(requests.text_tokens(text), p, constraint=plan.constraint,
                                   preserved_tokens=plan.preserved_tokens)
        final_parser = plan.new_parser
        req.finisher = lambda done: finish_chat(final_parser(False), done)
        return req, plan

    def submit_chat(self, messages: Messages, params: GenerationParams | None = None,
                    **overrides: Any) -> Request:
        """Queue a conversation and return its :class:`Request` at once; its result
        is a :class:`ChatCompletion` (``content``, ``reasoning_content``,
        ``tool_calls`` beside the usual Completion fields).

        Messages are OpenAI-shaped: string or content-part contents (text,
        image_url, input_audio, numpy arrays, PIL images: see
        :mod:`cortex_llama.content`; media need ``ModelConfig.mmproj``), assistant
        messages with ``content: None`` and ``tool_calls``, ``role: "tool"``
        results. ``overrides`` are GenerationParams fields and :class:`ChatOptions`
        fields (tools, tool_choice, parallel_tool_calls, response_format,
        reasoning_format, enable_thinking, reasoning_effort, chat_template_kwargs).

        Raises like :meth:`submit`, :class:`ChatRequestError` naming a bad message,
        tool or option, :class:`TemplateError`, and :class:`MediaError` for media
        that cannot be used.
        """
        req, _ = self._chat_request(messages, params, overrides)
        self.requests.engine.submit(req)
        return req

    def chat(self, messages: Messages, params: GenerationParams | None = None,
             **overrides: Any) -> ChatCompletion:
        """Answer a conversation; returns the assistant's :class:`ChatCompletion`.

        Takes what :meth:`submit_chat` takes and raises like it; also re-raises
        the request's failure (a forced tool call that does not parse, ...).
        """
        done = wait_for(self.submit_chat(messages, params, **overrides))
        assert isinstance(done, ChatCompletion)
        return done

    def stream_chat(self, messages: Messages, params: GenerationParams | None = None,
                    **overrides: Any) -> ChatStream:
        """Typed deltas (:class:`ChatDelta`: content, reasoning_content, tool-call
        pieces) of a conversation's answer, parsed as it streams. Submits at once,
        raising like :meth:`submit_chat`; leaving the loop early cancels."""
        req, plan = self._chat_request(messages, params, overrides)
        self.requests.engine.submit(req)
        return ChatStream(req, plan.new_parser(True))

    async def achat(self, messages: Messages, params: GenerationParams | None = None,
                    **overrides: Any) -> ChatCompletion:
        """:meth:`chat` for asyncio."""
        done = await self.submit_chat(messages, params, **overrides).aresult()
        assert isinstance(done, ChatCompletion)
        return done

    def astream_chat(self, messages: Messages, params: GenerationParams | None = None,
                     **overrides: Any) -> AsyncChatStream:
        """:meth:`stream_chat` for ``async for``."""
        req, plan = self._chat_request(messages, params, overrides)
        self.requests.engine.submit(req)
        return AsyncChatStream(req, plan.new_parser(True))
