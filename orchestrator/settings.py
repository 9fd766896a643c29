"""One frozen ``Settings`` built from the environment (and an optional config file).

Nothing else in the project reads ``os.environ``. Secrets (upstream API keys, our own API keys) are held
here only; they are never logged (``__repr__`` hides them) and never written to the store.

Environment variables (all optional):

==================================  ===========================================================
``REDIS_URL``                       Redis to use; unset = the embedded in-process store
``MARS_REDIS_PREFIX``               prefix of every Redis key (``mars``)
``MARS_CONFIG``                     a YAML/JSON config file with the same keys (env wins)
``MARS_API_KEYS``                   comma list of ``tenant:key`` (or bare ``key``) for the API
``MARS_HOST`` / ``MARS_PORT``       where ``mars serve`` listens (127.0.0.1 / 8000)
``MARS_DATA_DIR``                   trace corpora for evaluation (default ``../shared/data``)
``MARS_PROVIDER_<NAME>_KIND``       ``openai_compat`` | ``openai`` | ``anthropic`` | ``deepseek`` | ``replay`` | ``llamacpp``
``MARS_PROVIDER_<NAME>_BASE_URL``   upstream base URL
``MARS_PROVIDER_<NAME>_API_KEY``    upstream key (secret)
``MARS_PROVIDER_<NAME>_PROBE_STRATEGY``  continue | prefill | reprompt | extract | none
``MARS_PROVIDER_<NAME>_PROBE_MODEL``     model that answers reprompt probes
``MARS_MAX_BUDGET``                 largest K a job may ask for (512)
``MARS_MAX_TOKENS``                 largest max_tokens per trace (131072)
``MARS_MAX_CONCURRENT_JOBS``        concurrent jobs per API key (16)
``MARS_MAX_BODY_BYTES``             request body cap (1 MiB)
``MARS_RETENTION_S``                how long finished jobs are kept (86400)
``MARS_MAX_WATCHERS``               open event feeds and waiting votes per API process (4096)
``MARS_MAX_WATCHERS_PER_KEY``       the same, per API key (256)
``MARS_IDEMPOTENCY_WINDOW_S``       a repeated vote request within this joins the first one's job (600)
``MARS_VOTE_GRACE_S``               a non-stream vote whose client left runs this long for a retry (10)
``MARS_WORKERS``                    jobs one worker process runs at once (8)
``MARS_LEASE_MS``                   job lease length (15000)
``MARS_LOG_FORMAT``                 ``json`` | ``console`` (default: console on a terminal)
``MARS_LOG_LEVEL``                  info
``MARS_LLAMACPP_HOME``              llama.cpp build and model cache (``~/.cache/mars/llamacpp``)
==================================  ===========================================================

API keys and tenants: each entry of ``MARS_API_KEYS`` is ``tenant:key`` or a bare ``key``. A tenant
owns its jobs (job ids are scoped by the tenant's name). A bare key's tenant is named after a digest
of the key itself (``key-<16 hex>``, :func:`bare_key_tenant`), never after its place in the list, so
adding or removing other keys changes nothing for it. Rotating keys: a named tenant keeps its jobs
when its key changes (list ``team:new-key,team:old-key`` during the switch, then drop the old one);
a bare key that is replaced is a new tenant, and the old key's jobs are no longer visible to anyone
(they expire after the retention). A list that is a mistake (an empty entry, ``alice:``, one key for
two tenants) stops the server at startup.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestrator.errors import InvalidRequest

PROVIDER_KINDS = frozenset({"openai_compat", "openai", "anthropic", "deepseek", "replay", "llamacpp"})


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens."""

    input: float = 0.0
    cached_input: float = 0.0
    output: float = 0.0
    cache_write: float | None = None  # None: the input price (no write surcharge)


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    kind: str
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    probe_strategy: str | None = None
    probe_model: str | None = None
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_concurrent_streams: int = 512
    timeout_s: float = 600.0
    stall_timeout_s: float = 60.0
    max_retries: int = 4
    models: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str | None = None
    redis_prefix: str = "mars"
    api_keys: Mapping[str, str] = field(default_factory=dict, repr=False)  # sha256(key) -> tenant
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("../shared/data")
    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    prices: Mapping[str, Price] = field(default_factory=dict)
    max_budget: int = 512
    max_tokens: int = 131072
    max_concurrent_jobs: int = 16
    max_body_bytes: int = 1 << 20
    retention_s: int = 86400
    max_watchers: int = 4096
    max_watchers_per_tenant: int = 256
    idempotency_window_s: float = 600.0
    vote_grace_s: float = 10.0
    worker_concurrency: int = 8
    lease_ms: int = 15000
    heartbeat_ms: int = 5000
    shutdown_grace_s: float = 30.0
    log_format: str | None = None
    log_level: str = "info"
    default_provider: str | None = None
    llamacpp_home: Path = field(default_factory=lambda: Path.home() / ".cache" / "mars" / "llamacpp")

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def provider(self, name: str) -> ProviderConfig:
        from orchestrator.errors import UnknownProvider

        try:
            return self.providers[name]
        except KeyError:
            known = ", ".join(sorted(self.providers)) or "none configured"
            raise UnknownProvider(f"unknown provider {name!r} (known: {known})") from None


def hash_api_key(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()


def bare_key_tenant(key: str) -> str:
    """The tenant of a key listed without a name: derived from the key itself (a digest, domain-separated
    from ``hash_api_key``), so it stays the same whatever other keys are added, removed or reordered."""
    import hashlib

    return "key-" + hashlib.sha256(b"mars-tenant\0" + key.encode()).hexdigest()[:16]


def _parse_api_keys(raw: str | list[Any] | None) -> dict[str, str]:
    """``sha256(key) -> tenant`` from ``tenant:key`` and bare ``key`` entries (see the module docstring).

    A list that is set but is a mistake fails here, before the server starts: an empty entry (``" , "``
    would otherwise run the server open), an empty key (``"alice:"``) or tenant (``":key"``), and one
    key listed for two tenants (the last one would win)."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    items = raw.split(",") if isinstance(raw, str) else [str(x) for x in raw]
    keys: dict[str, str] = {}
    for n, item in enumerate(i.strip() for i in items):
        where = f"MARS_API_KEYS entry {n + 1}"
        if not item:
            raise InvalidRequest(
                f"{where} is empty; list keys as tenant:key,tenant:key (no empty entries)",
                field="MARS_API_KEYS",
            )
        tenant, sep, key = item.partition(":")
        tenant, key = tenant.strip(), key.strip()
        if not sep:
            tenant, key = bare_key_tenant(item), item
        elif not key or not tenant:
            missing = "key" if not key else "tenant name"
            raise InvalidRequest(
                f"{where} has an empty {missing}; write it as tenant:key", field="MARS_API_KEYS"
            )
        digest = hash_api_key(key)
        if keys.get(digest, tenant) != tenant:
            raise InvalidRequest(
                f"{where}: the same key is listed for two tenants ({keys[digest]!r} and {tenant!r}); "
                "give each tenant its own key",
                field="MARS_API_KEYS",
            )
        keys[digest] = tenant
    return keys


def _load_file(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    p = Path(path)
    text = p.read_text()
    if p.suffix in {".yaml", ".yml"}:
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise InvalidRequest(f"{path}: config file must hold a mapping", field="MARS_CONFIG")
    return data


def _providers(env: Mapping[str, str], file_cfg: Mapping[str, Any]) -> dict[str, ProviderConfig]:
    raw: dict[str, dict[str, Any]] = {
        str(name).lower(): dict(cfg) for name, cfg in (file_cfg.get("providers") or {}).items()
    }
    prefix = "MARS_PROVIDER_"
    for key, value in env.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        for suffix in (
            "KIND",
            "BASE_URL",
            "API_KEY",
            "PROBE_STRATEGY",
            "PROBE_MODEL",
            "MODELS",
            "REQUESTS_PER_MINUTE",
            "TOKENS_PER_MINUTE",
            "MAX_CONCURRENT_STREAMS",
        ):
            if rest.endswith("_" + suffix):
                name = rest[: -len(suffix) - 1].lower()
                raw.setdefault(name, {})[suffix.lower()] = value
                break
    out: dict[str, ProviderConfig] = {}
    for name, cfg in raw.items():
        kind = str(cfg.get("kind", "openai_compat"))
        if kind not in PROVIDER_KINDS:
            raise InvalidRequest(
                f"provider {name!r}: kind {kind!r} is not one of {sorted(PROVIDER_KINDS)}",
                field=f"MARS_PROVIDER_{name.upper()}_KIND",
            )
        models = cfg.get("models") or ()
        if isinstance(models, str):
            models = tuple(m.strip() for m in models.split(",") if m.strip())
        out[name] = ProviderConfig(
            name=name,
            kind=kind,
            base_url=str(cfg.get("base_url", "")),
            api_key=cfg.get("api_key"),
            probe_strategy=cfg.get("probe_strategy"),
            probe_model=cfg.get("probe_model"),
            requests_per_minute=_opt_float(cfg.get("requests_per_minute")),
            tokens_per_minute=_opt_float(cfg.get("tokens_per_minute")),
            max_concurrent_streams=int(cfg.get("max_concurrent_streams", 512)),
            models=tuple(models),
        )
    return out


def _opt_float(v: Any) -> float | None:
    return None if v in (None, "") else float(v)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build the frozen settings from ``env`` (default: the process environment)."""
    env = dict(os.environ if env is None else env)
    file_cfg = _load_file(env.get("MARS_CONFIG"))

    def get(name: str, key: str, default: Any) -> Any:
        if name in env:
            return env[name]
        return file_cfg.get(key, default)

    prices = {
        str(model): Price(**{k: float(v) for k, v in dict(p).items()})
        for model, p in (file_cfg.get("prices") or {}).items()
    }
    return Settings(
        redis_url=get("REDIS_URL", "redis_url", None) or None,
        redis_prefix=str(get("MARS_REDIS_PREFIX", "redis_prefix", "mars")),
        api_keys=_parse_api_keys(get("MARS_API_KEYS", "api_keys", None)),
        host=str(get("MARS_HOST", "host", "127.0.0.1")),
        port=int(get("MARS_PORT", "port", 8000)),
        data_dir=Path(get("MARS_DATA_DIR", "data_dir", "../shared/data")),
        providers=_providers(env, file_cfg),
        prices=prices,
        max_budget=int(get("MARS_MAX_BUDGET", "max_budget", 512)),
        max_tokens=int(get("MARS_MAX_TOKENS", "max_tokens", 131072)),
        max_concurrent_jobs=int(get("MARS_MAX_CONCURRENT_JOBS", "max_concurrent_jobs", 16)),
        max_body_bytes=int(get("MARS_MAX_BODY_BYTES", "max_body_bytes", 1 << 20)),
        retention_s=int(get("MARS_RETENTION_S", "retention_s", 86400)),
        max_watchers=int(get("MARS_MAX_WATCHERS", "max_watchers", 4096)),
        max_watchers_per_tenant=int(get("MARS_MAX_WATCHERS_PER_KEY", "max_watchers_per_tenant", 256)),
        idempotency_window_s=float(get("MARS_IDEMPOTENCY_WINDOW_S", "idempotency_window_s", 600.0)),
        vote_grace_s=float(get("MARS_VOTE_GRACE_S", "vote_grace_s", 10.0)),
        worker_concurrency=int(get("MARS_WORKERS", "worker_concurrency", 8)),
        lease_ms=int(get("MARS_LEASE_MS", "lease_ms", 15000)),
        heartbeat_ms=int(get("MARS_HEARTBEAT_MS", "heartbeat_ms", 5000)),
        shutdown_grace_s=float(get("MARS_SHUTDOWN_GRACE_S", "shutdown_grace_s", 30.0)),
        log_format=get("MARS_LOG_FORMAT", "log_format", None),
        log_level=str(get("MARS_LOG_LEVEL", "log_level", "info")),
        default_provider=get("MARS_DEFAULT_PROVIDER", "default_provider", None),
        llamacpp_home=Path(get("MARS_LLAMACPP_HOME", "llamacpp_home", Settings().llamacpp_home)).expanduser(),
    )
