"""deploy/k8s, checked without a cluster: every manifest parses, the kinds are there and wired to each other,
probes and resources are set, secrets only arrive through secretKeyRef, the ConfigMap's npspulse.toml loads,
and the autoscaler never goes past the partition count."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from streams.cli import _parser
from streams.effective import is_secret_key
from streams.settings import load_config
from streams.topics import check_credentials

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert isinstance(doc, dict) and doc.get("kind") and doc.get("apiVersion"), path.name
            docs.append({**doc, "_file": path.name})
    return docs


def _one(manifests: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in manifests if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def statefulset(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(manifests, "StatefulSet")


@pytest.fixture(scope="module")
def container(statefulset: dict[str, Any]) -> dict[str, Any]:
    containers = statefulset["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@pytest.fixture(scope="module")
def config_text(manifests: list[dict[str, Any]]) -> str:
    return _one(manifests, "ConfigMap")["data"]["npspulse.toml"]


def _load(text: str, tmp_path: Path, environ: dict[str, str] | None = None) -> Any:
    path = tmp_path / "npspulse.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path, environ=environ or {})


def test_kinds_and_kustomization(manifests: list[dict[str, Any]]) -> None:
    kinds = sorted(doc["kind"] for doc in manifests)
    assert kinds == ["ConfigMap", "HorizontalPodAutoscaler", "Kustomization", "PodDisruptionBudget", "Service",
                     "Service", "StatefulSet"]
    kustomization = _one(manifests, "Kustomization")
    listed = set(kustomization["resources"])
    assert listed == {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert {doc["apiVersion"] for doc in manifests if doc["kind"] == "HorizontalPodAutoscaler"} == {"autoscaling/v2"}
    assert _one(manifests, "PodDisruptionBudget")["apiVersion"] == "policy/v1"


def test_selectors_match_the_pod_labels(manifests: list[dict[str, Any]], statefulset: dict[str, Any]) -> None:
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for doc in manifests:
        if doc["kind"] == "Service":
            assert doc["spec"]["selector"].items() <= labels.items(), doc["metadata"]["name"]
        elif doc["kind"] == "PodDisruptionBudget":
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()
            assert doc["spec"]["maxUnavailable"] == 1


def test_services_headless_and_web(manifests: list[dict[str, Any]], statefulset: dict[str, Any],
                                   container: dict[str, Any]) -> None:
    services = {doc["metadata"]["name"]: doc for doc in manifests if doc["kind"] == "Service"}
    headless = services[statefulset["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    web = next(svc for name, svc in services.items() if svc is not headless)
    assert web["spec"].get("clusterIP") != "None"
    port_names = {port["name"] for port in container["ports"]}
    for service in services.values():
        assert all(port["targetPort"] in port_names for port in service["spec"]["ports"])


def test_worker_command_config_and_probes(container: dict[str, Any], statefulset: dict[str, Any],
                                          config_text: str, tmp_path: Path) -> None:
    args = _parser().parse_args(container["args"])
    assert args.command == "worker"
    assert args.worker_id == "$(POD_NAME)"
    pod_name = next(item for item in container["env"] if item["name"] == "POD_NAME")
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    config = _load(config_text, tmp_path)
    web_port = args.web_port or config.worker.web_port
    assert (args.web_host or config.worker.web_host) == "0.0.0.0"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"web": web_port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "web"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "web"}
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in statefulset["spec"]["template"]["spec"]["volumes"]}
    config_volume = volumes["config"]["configMap"]
    assert str(args.config) == f"{mounts['config']}/{config_volume['items'][0]['path']}"
    assert config_volume["name"] == "npspulse-config"


def test_state_volume_is_the_faust_data_directory(container: dict[str, Any], statefulset: dict[str, Any]) -> None:
    claims = statefulset["spec"]["volumeClaimTemplates"]
    assert [claim["metadata"]["name"] for claim in claims] == ["state"]
    assert claims[0]["spec"]["resources"]["requests"]["storage"]
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    # Faust keeps its data directory (and rocksdb:// tables) relative to the working directory.
    assert mounts["state"] == container["workingDir"] == "/var/lib/npspulse"
    dockerfile = (K8S.parent / "Dockerfile").read_text(encoding="utf-8")
    assert "WORKDIR /var/lib/npspulse" in dockerfile


def test_resources_and_security_context(container: dict[str, Any], statefulset: dict[str, Any]) -> None:
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys(), kind
    pod = statefulset["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0 and pod["fsGroup"] == pod["runAsGroup"]
    assert f"USER {pod['runAsUser']}:{pod['runAsGroup']}" in (K8S.parent / "Dockerfile").read_text(encoding="utf-8")
    own = container["securityContext"]
    assert own["allowPrivilegeEscalation"] is False and own["capabilities"]["drop"] == ["ALL"]
    image = container["image"]
    assert ":" in image and not image.endswith(":latest")


def test_secrets_only_through_secret_key_refs(manifests: list[dict[str, Any]], container: dict[str, Any]) -> None:
    for doc in manifests:
        if doc["kind"] == "Secret":
            assert not doc.get("data") and not doc.get("stringData"), f"literal secret in {doc['_file']}"
    refs = {}
    for position, item in enumerate(container["env"]):
        if is_secret_key(item["name"]):
            assert "value" not in item, f"{item['name']} has a literal value"
            refs[item["name"]] = (position, item["valueFrom"]["secretKeyRef"])
    assert refs["NPSPULSE_KAFKA_SASL_PASSWORD"][1] == {"name": "npspulse-credentials", "key": "kafka-sasl-password"}
    assert refs["NPSPULSE_REDIS_PASSWORD"][1] == {"name": "npspulse-credentials", "key": "redis-password"}
    url_position, url_item = next((i, item) for i, item in enumerate(container["env"])
                                  if item["name"] == "NPSPULSE_REDIS_URL")
    url = urlsplit(url_item["value"])
    # The password is a reference Kubernetes expands, to a variable defined earlier (a later one stays literal).
    reference = re.fullmatch(r"\$\((\w+)\)", url.password or "")
    assert reference and reference.group(1) in refs
    assert refs[reference.group(1)][0] < url_position


def test_config_map_loads_and_holds_no_secret(config_text: str, tmp_path: Path) -> None:
    config = _load(config_text, tmp_path)
    assert config.kafka.security_protocol == "SASL_SSL" and config.kafka.sasl_username
    assert config.kafka.sasl_password is None
    assert urlsplit(config.redis.url).password is None
    assert config.worker.store in ("memory://", "rocksdb://")
    # With the password from the environment, as in the pod, the worker's credential check passes.
    check_credentials(_load(config_text, tmp_path, {"NPSPULSE_KAFKA_SASL_PASSWORD": secrets.token_hex(16)}).kafka)


def test_autoscaler_stays_within_the_partition_count(manifests: list[dict[str, Any]], statefulset: dict[str, Any],
                                                     config_text: str, tmp_path: Path) -> None:
    hpa = _one(manifests, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", statefulset["metadata"]["name"])
    partitions = _load(config_text, tmp_path).kafka.partitions
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= partitions
    assert "replicas" not in statefulset["spec"], "the autoscaler owns the replica count"
    comment = (K8S / hpa["_file"]).read_text(encoding="utf-8")
    assert re.search(r"beyond the partition count sit idle", comment)
