"""The OpenAI-compatible HTTP server (``pip install cortex-llama[server]``).

``create_app(llm, ...)`` returns a FastAPI app to mount or run with uvicorn;
``serve(llm, ...)`` runs it (``cortex-llama serve MODEL`` on the command line).
Routes: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``,
``/v1/embeddings`` (also without ``/v1``, as llama-server), ``/health``,
``/metrics``, ``/tokenize``, ``/detokenize``, ``/apply-template``, and the
OpenAPI docs at ``/docs``.
"""

from __future__ import annotations

from .app import create_app
from .run import serve

__all__ = ["create_app", "serve"]
