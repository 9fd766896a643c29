"""Build a wrapped ``Provider`` from ``ProviderConfig``: adapter, then rate limits, then retries.

Kinds: ``openai_compat`` (vLLM, SGLang, Together), ``llamacpp`` (llama.cpp's ``llama-server``:
slot-aware, ``/apply-template`` probes), ``openai``, ``anthropic``, ``deepseek`` and ``replay``
(``openai_compat`` pointed at our replay server: ``base_url`` is the server root or its ``/v1``).
A configured probe strategy that a configured model cannot do fails here, before any job runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from orchestrator.domain import ProbeStrategy
from orchestrator.errors import InvalidRequest, UnsupportedCapability
from orchestrator.providers.base import Provider
from orchestrator.providers.config import Timeouts
from orchestrator.providers.openai_compat import CompatOptions, OpenAICompatProvider
from orchestrator.providers.wrappers import (
    BucketKey,
    RateLimitedProvider,
    RateLimits,
    RedisBuckets,
    RetryingProvider,
    RetryPolicy,
)
from orchestrator.settings import ProviderConfig, Settings


def build_adapter(config: ProviderConfig, *, compat_options: CompatOptions | None = None) -> Provider:
    """The bare adapter (no retries, no limits)."""
    timeouts = Timeouts(stall_s=config.stall_timeout_s, request_s=config.timeout_s)
    connections = max(64, config.max_concurrent_streams * 2)
    common: dict[str, Any] = {
        "name": config.name,
        "api_key": config.api_key,
        "timeouts": timeouts,
        "probe_model": config.probe_model,
        "max_connections": connections,
    }
    if config.kind in {"openai_compat", "replay"}:
        base = config.base_url.rstrip("/")
        if config.kind == "replay" and not base.endswith("/v1"):
            base += "/v1"
        if not base:
            raise InvalidRequest(f"provider {config.name!r}: base_url is required", field="base_url")
        return OpenAICompatProvider(base_url=base, options=compat_options, **common)
    if config.kind == "llamacpp":
        from orchestrator.providers.llamacpp import LlamaCppProvider

        if not config.base_url:
            raise InvalidRequest(f"provider {config.name!r}: base_url is required", field="base_url")
        return LlamaCppProvider(base_url=config.base_url, **common)
    # Vendor SDKs are imported only for the kinds in use: anthropic alone takes seconds to import.
    if config.kind == "openai":
        from orchestrator.providers.openai import OpenAIProvider

        return OpenAIProvider(base_url=config.base_url, **common)
    if config.kind == "anthropic":
        from orchestrator.providers.anthropic import AnthropicProvider

        return AnthropicProvider(base_url=config.base_url, **common)
    if config.kind == "deepseek":
        from orchestrator.providers.deepseek import DeepSeekProvider

        return DeepSeekProvider(base_url=config.base_url, **common)
    raise InvalidRequest(f"provider {config.name!r}: unknown kind {config.kind!r}", field="kind")


def build_provider(
    config: ProviderConfig,
    *,
    redis: Any | None = None,
    bucket_key: BucketKey | None = None,
    retry: RetryPolicy | None = None,
    compat_options: CompatOptions | None = None,
) -> Provider:
    """Adapter wrapped in rate limits (shared through ``redis`` when given, each bucket under the key
    ``bucket_key`` names: ``store.keys.Keys.ratelimit``) and one retry layer."""
    adapter = build_adapter(config, compat_options=compat_options)
    if config.probe_strategy:
        try:
            strategy = ProbeStrategy(config.probe_strategy)
        except ValueError:
            raise InvalidRequest(
                f"provider {config.name!r}: unknown probe strategy {config.probe_strategy!r}",
                field="probe_strategy",
            ) from None
        for model in config.models:
            allowed = adapter.capabilities(model).probe_strategies
            if strategy is not ProbeStrategy.NONE and strategy not in allowed:
                raise UnsupportedCapability(
                    f"provider {config.name!r} ({config.kind}), model {model!r}: probe strategy "
                    f"{strategy.value!r} unavailable (available: {', '.join(sorted(s.value for s in allowed))})"
                )
    limits = RateLimits(
        requests_per_minute=config.requests_per_minute,
        tokens_per_minute=config.tokens_per_minute,
        max_concurrent_streams=config.max_concurrent_streams,
    )
    shared = None
    if redis is not None:
        if bucket_key is None:
            raise ValueError("shared rate limits need the key of each bucket (store.keys.Keys.ratelimit)")
        shared = RedisBuckets(redis, key=bucket_key)
    limited = RateLimitedProvider(adapter, limits, shared=shared)
    policy = retry or RetryPolicy(max_attempts=config.max_retries + 1)
    return RetryingProvider(limited, policy)


@asynccontextmanager
async def open_providers(
    settings: Settings, *, bucket_key: BucketKey
) -> AsyncIterator[Mapping[str, Provider]]:
    """Every configured upstream, wrapped (retries, rate limits), closed when the block ends. With
    ``REDIS_URL`` set, the request and token budgets (``requests_per_minute``, ``tokens_per_minute``) are
    token buckets in Redis under the keys ``bucket_key`` names (``Keys(settings.redis_prefix).ratelimit``),
    shared by every process that serves the same upstream; without it they are per process. The stream
    cap stays per process."""
    built: dict[str, Provider] = {}
    shared_client = None
    try:
        if settings.redis_url and any(
            c.requests_per_minute or c.tokens_per_minute for c in settings.providers.values()
        ):
            import redis.asyncio as aioredis

            shared_client = aioredis.Redis.from_url(settings.redis_url)
        for name, config in settings.providers.items():
            built[name] = build_provider(config, redis=shared_client, bucket_key=bucket_key)
        yield built
    finally:
        for provider in built.values():
            await provider.aclose()
        if shared_client is not None:
            await shared_client.aclose()
