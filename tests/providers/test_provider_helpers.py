"""Answer readers, the offline token estimator, error translation and the provider factory."""

from __future__ import annotations

import httpx2
import openai
import pytest

from orchestrator import errors
from orchestrator.domain import ProbeStrategy
from orchestrator.providers.errors import retry_after_s, status_error, translate, translated
from orchestrator.providers.extract import close_box, extract_answer, last_boxed, probe_answer
from orchestrator.providers.factory import build_adapter, build_provider
from orchestrator.providers.openai_compat import OpenAICompatProvider
from orchestrator.providers.wrappers import RetryingProvider
from orchestrator.settings import ProviderConfig
from orchestrator.tokens import ESTIMATOR_NAME, estimate_tokens


def test_answer_readers() -> None:
    """Boxes are read with balanced braces; a probe reads the box its suffix opened."""
    assert close_box("\\frac{5}{12}} and more") == "\\frac{5}{12}"
    assert close_box("never closes") is None
    assert close_box("}") is None
    assert last_boxed("a \\boxed{1} then \\boxed{\\sqrt{2}} end") == "\\sqrt{2}"
    assert extract_answer("so the answer is 42.") == "42"
    assert extract_answer("nothing here") is None
    assert probe_answer("204}", "... \\boxed{") == "204"
    assert probe_answer("The answer is \\boxed{7}.", "...\\boxed{") == "7"


def test_token_estimator_is_offline_and_plausible() -> None:
    """The estimator needs no files; counts are near one token per short word."""
    assert ESTIMATOR_NAME == "mars-regex-v1"
    assert estimate_tokens("") == 0
    assert estimate_tokens("Hello world") == 2
    assert estimate_tokens("x = 12345") == 4  # x, " =", " 123", "45"
    text = "Let me compute the derivative of the polynomial carefully. " * 20
    assert 180 <= estimate_tokens(text) <= 240


def test_retry_after_parsing_prefers_milliseconds() -> None:
    """retry-after-ms wins; seconds and HTTP dates work; garbage is ignored."""
    assert retry_after_s({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_s({"retry-after": "2"}) == 2.0
    assert retry_after_s({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, now_s=1445412470.0) == 10.0
    assert retry_after_s({"retry-after": "soon"}) is None


def test_status_and_vendor_errors_translate_into_the_tree() -> None:
    """HTTP statuses and SDK/transport exceptions map to orchestrator.errors."""
    assert isinstance(status_error(429, {"retry-after": "1"}, b"{}"), errors.RateLimited)
    assert isinstance(status_error(529, {}, b"{}"), errors.Overloaded)
    assert isinstance(
        status_error(400, {}, b'{"error": {"type": "overloaded_error", "message": "x"}}'), errors.Overloaded
    )
    assert isinstance(status_error(503, {}, b""), errors.UpstreamServerError)
    assert isinstance(status_error(404, {}, b""), errors.UpstreamRejected)
    rejected = status_error(401, {}, b'{"error": {"message": "bad key"}}')
    assert isinstance(rejected, errors.UpstreamRejected)
    assert "bad key" in str(rejected)
    request = httpx2.Request("POST", "http://x")
    assert isinstance(translate(httpx2.ReadTimeout("slow", request=request)), errors.UpstreamTimeout)
    assert isinstance(translate(openai.APIConnectionError(request=request)), errors.UpstreamConnectionError)
    assert translate(ValueError("a bug of ours")) is None
    assert translate(KeyError("choices")) is None


def test_a_404_is_an_unknown_model_only_when_it_names_the_model() -> None:
    """OpenAI's model_not_found, vLLM's and Anthropic's model messages are UnknownModel; a 404 for a
    wrong path (a base URL without /v1) is an UpstreamRejected that keeps its status."""
    openai_body = b'{"error": {"message": "The model `x` does not exist", "code": "model_not_found"}}'
    vllm_body = b'{"object": "error", "message": "The model `x` does not exist.", "type": "NotFoundError"}'
    anthropic_body = b'{"type": "error", "error": {"type": "not_found_error", "message": "model: claude-x"}}'
    for body in (openai_body, vllm_body, anthropic_body):
        assert isinstance(status_error(404, {}, body), errors.UnknownModel), body
    wrong_path = status_error(404, {}, b'{"detail": "Not Found"}')
    assert isinstance(wrong_path, errors.UpstreamRejected)
    assert wrong_path.status == 404
    route = status_error(404, {}, b'{"error": {"message": "no route for POST /chat/completions"}}')
    assert isinstance(route, errors.UpstreamRejected)


def test_translated_maps_vendor_errors_and_reraises_our_own() -> None:
    """Inside ``translated``: a transport timeout leaves as UpstreamTimeout chained to the original; a
    ValueError (our bug) and a MarsError leave unchanged."""
    request = httpx2.Request("POST", "http://x")
    original = httpx2.ConnectTimeout("slow", request=request)
    with pytest.raises(errors.UpstreamTimeout) as caught, translated("up"):
        raise original
    assert caught.value.__cause__ is original
    assert str(caught.value).startswith("up: ")
    with pytest.raises(ValueError, match="ours"), translated("up"):
        raise ValueError("ours")
    mine = errors.InvalidRequest("bad")
    with pytest.raises(errors.InvalidRequest) as caught_mine, translated("up"):
        raise mine
    assert caught_mine.value is mine


async def test_factory_builds_wrapped_adapters_and_checks_strategies() -> None:
    """Each kind builds; replay points at /v1; a strategy a model cannot do fails at build time."""
    replay = build_adapter(ProviderConfig(name="r", kind="replay", base_url="http://127.0.0.1:1"))
    assert isinstance(replay, OpenAICompatProvider)
    assert replay._base_url == "http://127.0.0.1:1/v1"
    await replay.aclose()
    for kind in ("openai_compat", "openai", "anthropic", "deepseek"):
        provider = build_provider(
            ProviderConfig(name=kind, kind=kind, base_url="http://127.0.0.1:1/v1", api_key="k")
        )
        assert isinstance(provider, RetryingProvider)
        assert provider.name == kind
        await provider.aclose()
    with pytest.raises(errors.UnsupportedCapability, match="prefill"):
        build_provider(
            ProviderConfig(
                name="o", kind="openai", base_url="", probe_strategy="prefill", models=("gpt-4.1",)
            )
        )
    with pytest.raises(errors.InvalidRequest):
        build_provider(ProviderConfig(name="o", kind="openai", base_url="", probe_strategy="telepathy"))
    ok = build_provider(
        ProviderConfig(
            name="a", kind="anthropic", base_url="", probe_strategy="prefill", models=("claude-x",)
        )
    )
    assert ProbeStrategy.PREFILL in ok.capabilities("claude-x").probe_strategies
    await ok.aclose()
