"""Key names come from one place; parts taken from requests cannot alias another key."""

from __future__ import annotations

from orchestrator.store.keys import Keys


def test_rate_limit_buckets_live_under_the_prefix_with_encoded_parts() -> None:
    """A provider or model name with ``:`` or ``/`` stays one key part; the bucket names its kind."""
    keys = Keys("acme")
    assert keys.ratelimit("up", "org/model:v1", "requests") == "acme:ratelimit:up:org%2Fmodel%3Av1:requests"
    assert keys.ratelimit("a:b", "c", "tokens") != keys.ratelimit("a", "b:c", "tokens")
    assert keys.ratelimit("up", "m", "tokens").startswith(keys.pattern()[:-1])
