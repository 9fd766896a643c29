"""The deployment files parse, pass their schemas, and agree with the code: key names, commands, ports,
settings. Offline: yaml + jsonschema only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.settings import load_settings
from orchestrator.store.keys import CONSUMER_GROUP, Keys
from tests.deploy import schemas

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


def k8s_documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in k8s_documents() if d["kind"] == kind]


def deployment(name: str) -> dict[str, Any]:
    (found,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == name]
    return found


def test_every_manifest_passes_its_schema() -> None:
    """Each Kubernetes document of a kind we ship is valid against the schema for that kind."""
    docs = k8s_documents()
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "ScaledObject", "ConfigMap", "Secret", "Service", "TriggerAuthentication"} <= kinds
    for doc in docs:
        schema = schemas.BY_KIND.get(doc["kind"])
        if schema is not None and doc["metadata"]["name"] != "redis":
            jsonschema.validate(doc, schema)


def test_kustomization_lists_existing_files() -> None:
    """kubectl apply -k finds every resource it names, and every manifest is named."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_services_select_deployments_and_named_ports() -> None:
    """Each Service's selector matches a pod template, and its targetPort names a container port."""
    templates = [d["spec"]["template"] for d in by_kind("Deployment")]
    for sts in by_kind("StatefulSet"):
        templates.append(sts["spec"]["template"])
    for service in by_kind("Service"):
        selector = service["spec"]["selector"]
        matches = [t for t in templates if selector.items() <= t["metadata"]["labels"].items()]
        assert matches, service["metadata"]["name"]
        port_names = {
            p.get("name") for t in matches for c in t["spec"]["containers"] for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names
    for d in by_kind("Deployment"):
        assert (
            d["spec"]["selector"]["matchLabels"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        )


def test_api_probes_hit_the_real_health_routes() -> None:
    """The API's probes use /healthz and /readyz on the container's HTTP port; the scrape port matches."""
    api = deployment("mars-api")
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port = container["ports"][0]["containerPort"]
    assert container["args"][container["args"].index("--port") + 1] == str(port)
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_autoscaler_watches_the_jobs_stream_of_the_code() -> None:
    """KEDA scales the worker Deployment on the stream and consumer group the store really uses."""
    (scaled,) = by_kind("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment("mars-worker")["metadata"]["name"]
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["metadata"]["stream"] == Keys().jobs_stream
        assert trigger["metadata"]["consumerGroup"] == CONSUMER_GROUP
    assert any("pendingEntriesCount" in t["metadata"] for t in scaled["spec"]["triggers"])
    (auth,) = by_kind("TriggerAuthentication")
    assert scaled["spec"]["triggers"][0]["authenticationRef"]["name"] == auth["metadata"]["name"]


def test_config_and_secret_build_valid_settings() -> None:
    """The ConfigMap and the Secret together load into Settings: providers, keys and caps as intended."""
    (config,) = by_kind("ConfigMap")
    (secret,) = by_kind("Secret")
    for d in by_kind("Deployment"):
        refs = [
            e.get("configMapRef", e.get("secretRef"))["name"]
            for e in d["spec"]["template"]["spec"]["containers"][0]["envFrom"]
        ]
        assert refs == [config["metadata"]["name"], secret["metadata"]["name"]]
    settings = load_settings({**config["data"], **secret["stringData"]})
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.default_provider in settings.providers
    assert settings.providers["openai"].api_key == secret["stringData"]["MARS_PROVIDER_OPENAI_API_KEY"]
    assert len(settings.api_keys) == 1
    assert settings.max_budget == int(config["data"]["MARS_MAX_BUDGET"])


def test_compose_file() -> None:
    """docker-compose.yml: the four services with health checks, keys required, API on loopback."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    jsonschema.validate(compose, schemas.COMPOSE)
    services = compose["services"]
    api = services["api"]
    assert api["command"][0] == "serve"
    assert "?" in api["environment"]["MARS_API_KEYS"]  # required: compose refuses to start without it
    assert all(p.startswith("127.0.0.1:") for p in api["ports"])
    assert services["worker"]["command"] == ["worker"]
    assert services["replay"]["command"][0] == "replay-server"
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["REDIS_URL"].startswith("redis://redis:")
        assert env["MARS_PROVIDER_REPLAY_BASE_URL"].startswith("http://replay:")
        assert set(services[name]["depends_on"]) == {"redis", "replay"}


def test_dockerfile_is_slim_and_non_root() -> None:
    """One slim image, an unprivileged user, `mars` as the entry point."""
    lines = [ln.strip() for ln in (ROOT / "deploy" / "Dockerfile").read_text().splitlines()]
    froms = [ln for ln in lines if ln.startswith("FROM ")]
    assert froms
    assert all("slim" in ln for ln in froms)
    (user,) = [ln for ln in lines if ln.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in {"root", "0"}
    assert 'ENTRYPOINT ["mars"]' in lines
    assert any(ln.startswith("CMD") and '"serve"' in ln for ln in lines)


def test_prometheus_scrape_config() -> None:
    """Both scrape jobs read /metrics: the compose API and annotated Kubernetes pods."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jsonschema.validate(config, schemas.PROMETHEUS)
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["mars-compose"]["metrics_path"] == "/metrics"
    assert jobs["mars-compose"]["static_configs"][0]["targets"] == ["api:8000"]
    assert jobs["mars-kubernetes"]["kubernetes_sd_configs"][0]["namespaces"]["names"] == ["mars"]


@pytest.mark.parametrize("command", ["serve", "worker", "replay-server"])
def test_commands_in_the_manifests_exist(command: str) -> None:
    """Every `mars` command the deployment files run exists, with the options they pass."""
    args: set[str] = set()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    argv_lists = [
        s["command"]
        for s in compose["services"].values()
        if "command" in s and s["command"][0] != "redis-server"
    ]
    argv_lists += [d["spec"]["template"]["spec"]["containers"][0]["args"] for d in by_kind("Deployment")]
    for argv in argv_lists:
        if argv[0] == command:
            args |= {a.split("=")[0] for a in argv[1:] if a.startswith("--")}
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for option in args:
        assert option in result.output, (command, option)
