"""OpenAI's own API. Probe strategy ``reprompt``: a (cheap, configurable) probe model reads the partial
trace and states the answer it points to; OpenAI cannot continue a prefix.

Reasoning models (o-series, gpt-5) hide their reasoning and reject logprobs: for them the only
strategy is ``none`` (vote on finished traces), and asking for logprobs fails early with
``UnsupportedCapability``. Streams ask for ``include_usage`` only (OpenAI rejects vLLM's per-chunk
usage), so per-chunk token counts come from logprob entries when asked, else from the offline
estimator (flagged); the final usage chunk is exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.domain import ProbeStrategy
from orchestrator.providers.base import Capabilities, TraceRequest
from orchestrator.providers.config import Timeouts
from orchestrator.providers.openai_compat import CompatOptions, OpenAICompatProvider

REASONING_MODEL_PREFIXES = ("o1", "o3", "o4", "gpt-5")
DEFAULT_BASE_URL = "https://api.openai.com/v1"


def is_reasoning_model(model: str) -> bool:
    name = model.rsplit("/", 1)[-1]
    return name.startswith(REASONING_MODEL_PREFIXES)


HOSTED_OPTIONS = CompatOptions(continuous_usage=False, send_top_k=False, think_open="", probe_top_k=None)


class HostedProvider(OpenAICompatProvider):
    """An OpenAI-style hosted API (OpenAI, DeepSeek): no vLLM extensions, a default base URL."""

    default_base_url = DEFAULT_BASE_URL

    def __init__(
        self,
        *,
        name: str,
        base_url: str | None = None,
        api_key: str | None = None,
        timeouts: Timeouts | None = None,
        probe_model: str | None = None,
        max_connections: int = 1024,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            name=name,
            base_url=base_url or self.default_base_url,
            api_key=api_key,
            timeouts=timeouts,
            options=HOSTED_OPTIONS,
            max_connections=max_connections,
            probe_model=probe_model,
            headers=headers,
        )


class OpenAIProvider(HostedProvider):
    kind = "openai"

    def capabilities(self, model: str) -> Capabilities:
        if is_reasoning_model(model):
            return Capabilities(
                probe_strategies=frozenset({ProbeStrategy.NONE}), logprobs=False, reasoning_visible=False
            )
        return Capabilities(
            probe_strategies=frozenset({ProbeStrategy.REPROMPT, ProbeStrategy.EXTRACT}),
            logprobs=True,
            reasoning_visible=True,
        )

    def _trace_body(self, request: TraceRequest) -> dict[str, Any]:
        body = super()._trace_body(request)
        body["max_completion_tokens"] = body.pop("max_tokens")
        if request.prefix:  # OpenAI cannot continue a prefix: the caller must restart the trace
            from orchestrator.errors import UnsupportedCapability

            raise UnsupportedCapability(f"{self.name}: OpenAI cannot continue a trace prefix")
        if is_reasoning_model(request.model):
            body.pop("temperature", None)
            body.pop("top_p", None)
        return body
