"""JSON schemas for the fields of the deployment files that matter to MARS (not full Kubernetes schemas:
those need the network). Each schema pins what would break a deployment if it were wrong."""

from __future__ import annotations

from typing import Any

NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
QUANTITY = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|Mi|Gi|Ki)?$"}
RESOURCES = {
    "type": "object",
    "required": ["requests", "limits"],
    "properties": {
        "requests": {"type": "object", "required": ["cpu", "memory"], "additionalProperties": QUANTITY},
        "limits": {"type": "object", "required": ["cpu", "memory"], "additionalProperties": QUANTITY},
    },
}
PROBE = {
    "type": "object",
    "oneOf": [
        {
            "required": ["httpGet"],
            "properties": {
                "httpGet": {
                    "type": "object",
                    "required": ["path", "port"],
                    "properties": {"path": {"type": "string", "pattern": "^/"}},
                }
            },
        },
        {"required": ["exec"], "properties": {"exec": {"required": ["command"]}}},
    ],
    "properties": {"periodSeconds": {"type": "integer", "minimum": 1}},
}
CONTAINER = {
    "type": "object",
    "required": ["name", "image", "args", "resources", "livenessProbe", "readinessProbe", "envFrom"],
    "properties": {
        "name": NAME,
        "image": {"type": "string", "pattern": "^mars-orchestrator:"},
        "args": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "resources": RESOURCES,
        "livenessProbe": PROBE,
        "readinessProbe": PROBE,
        "envFrom": {"type": "array", "minItems": 2},
        "securityContext": {
            "type": "object",
            "properties": {"allowPrivilegeEscalation": {"const": False}},
            "required": ["allowPrivilegeEscalation"],
        },
    },
}
DEPLOYMENT: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "apps/v1"},
        "kind": {"const": "Deployment"},
        "metadata": {"type": "object", "required": ["name"], "properties": {"name": NAME}},
        "spec": {
            "type": "object",
            "required": ["selector", "template"],
            "properties": {
                "replicas": {"type": "integer", "minimum": 1},
                "selector": {"type": "object", "required": ["matchLabels"]},
                "template": {
                    "type": "object",
                    "required": ["metadata", "spec"],
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["containers", "securityContext"],
                            "properties": {
                                "securityContext": {
                                    "type": "object",
                                    "required": ["runAsNonRoot"],
                                    "properties": {"runAsNonRoot": {"const": True}},
                                },
                                "containers": {"type": "array", "minItems": 1, "items": CONTAINER},
                            },
                        }
                    },
                },
            },
        },
    },
}
SCALED_OBJECT: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers", "minReplicaCount", "maxReplicaCount"],
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"]},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"const": "redis-streams"},
                            "metadata": {
                                "type": "object",
                                "required": ["address", "stream", "consumerGroup"],
                                "properties": {
                                    "pendingEntriesCount": {"type": "string", "pattern": "^[1-9][0-9]*$"},
                                    "lagCount": {"type": "string", "pattern": "^[1-9][0-9]*$"},
                                },
                                "anyOf": [{"required": ["pendingEntriesCount"]}, {"required": ["lagCount"]}],
                            },
                        },
                    },
                },
            },
        },
    },
}
CONFIG_MAP: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "data"],
    "properties": {
        "apiVersion": {"const": "v1"},
        "data": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
SECRET: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "stringData"],
    "properties": {
        "type": {"const": "Opaque"},
        "stringData": {
            "type": "object",
            "required": ["MARS_API_KEYS"],
            "additionalProperties": {"type": "string"},
        },
    },
}
SERVICE: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["selector", "ports"],
            "properties": {
                "ports": {"type": "array", "minItems": 1, "items": {"required": ["port", "targetPort"]}}
            },
        }
    },
}
HEALTHCHECK = {
    "type": "object",
    "required": ["test", "interval", "timeout", "retries"],
    "properties": {"test": {"type": "array", "minItems": 2}},
}
COMPOSE: dict[str, Any] = {
    "type": "object",
    "required": ["services"],
    "properties": {
        "services": {
            "type": "object",
            "required": ["redis", "api", "worker", "replay"],
            "additionalProperties": {
                "type": "object",
                "required": ["healthcheck"],
                "properties": {
                    "healthcheck": HEALTHCHECK,
                    "command": {"type": "array", "items": {"type": "string"}},
                    "depends_on": {
                        "type": "object",
                        "additionalProperties": {
                            "type": "object",
                            "required": ["condition"],
                            "properties": {"condition": {"const": "service_healthy"}},
                        },
                    },
                },
            },
        }
    },
}
PROMETHEUS: dict[str, Any] = {
    "type": "object",
    "required": ["scrape_configs"],
    "properties": {
        "scrape_configs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["job_name"],
                "anyOf": [{"required": ["static_configs"]}, {"required": ["kubernetes_sd_configs"]}],
            },
        }
    },
}
BY_KIND = {
    "Deployment": DEPLOYMENT,
    "ScaledObject": SCALED_OBJECT,
    "ConfigMap": CONFIG_MAP,
    "Secret": SECRET,
    "Service": SERVICE,
}
