"""DeepSeek's hosted API: chat prefix completion on the beta base URL.

A probe continues the trace: the last message is the assistant's partial text plus the answer-forcing
suffix, marked ``"prefix": true`` (``https://api.deepseek.com/beta``). Whether a partial *reasoning*
prefix is accepted is to be verified per model: if the upstream rejects a prefix probe (4xx), the model
is remembered as unable, the probe fails with ``UnsupportedCapability`` and ``capabilities()`` then
offers ``reprompt`` instead. ``deepseek-reasoner`` rejects logprobs.
"""

from __future__ import annotations

from typing import Any

from orchestrator.domain import ProbeStrategy
from orchestrator.errors import UnsupportedCapability, UpstreamRejected
from orchestrator.providers.base import Capabilities, ProbeRequest, ProbeResult, TraceRequest
from orchestrator.providers.errors import translated
from orchestrator.providers.openai import HostedProvider
from orchestrator.providers.openai_compat import (
    probe_result,
)

DEFAULT_BASE_URL = "https://api.deepseek.com/beta"


class DeepSeekProvider(HostedProvider):
    kind = "deepseek"
    default_base_url = DEFAULT_BASE_URL

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._no_prefix: set[str] = set()

    def capabilities(self, model: str) -> Capabilities:
        strategies = {ProbeStrategy.REPROMPT, ProbeStrategy.EXTRACT}
        if model not in self._no_prefix:
            strategies.add(ProbeStrategy.CONTINUE)
        return Capabilities(
            probe_strategies=frozenset(strategies),
            logprobs="reasoner" not in model,
            reasoning_visible=True,
            continue_prefix=model not in self._no_prefix,
        )

    def _trace_body(self, request: TraceRequest) -> dict[str, Any]:
        body = super()._trace_body(request)
        if request.prefix:
            body.pop("continue_final_message", None)
            body.pop("add_generation_prompt", None)
            body["messages"][-1]["prefix"] = True
        return body

    async def _probe_continue(self, request: ProbeRequest) -> ProbeResult:
        model = request.model or self.probe_model or request.trace.model
        messages: list[Any] = [dict(m) for m in request.trace.messages]
        messages.append({"role": "assistant", "content": request.prefix + request.suffix, "prefix": True})
        try:
            with translated(self.name):
                chat = await self._sdk.chat.completions.create(
                    model=model, messages=messages, max_tokens=request.max_tokens, temperature=0.6, top_p=0.95
                )
        except UpstreamRejected as err:
            self._no_prefix.add(model)
            raise UnsupportedCapability(
                f"{self.name}: model {model!r} rejected a prefix probe ({err}); use reprompt"
            ) from err
        text = (chat.choices[0].message.content or "") if chat.choices else ""
        return probe_result(text, request, chat.usage)
