"""docker-compose.yml, checked without a Docker engine: the services, pinned images, health checks and start
order, the listeners and the addresses the workers get, and the workers' command lines parsed with the real
`npspulse` argument parser against the config file they mount."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from streams.cli import _parser
from streams.settings import load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SINK_COMMAND = ["sink", "webhook", "--topic", "alerts",
                "--url", "${NPSPULSE_ALERT_WEBHOOK_URL:-http://host.docker.internal:8080/alerts}", "--format", "slack"]
_VARIABLE = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\})")


def interpolate(value: str, environ: dict[str, str] | None = None) -> str:
    """Compose's variable substitution for the forms used here: ${VAR}, ${VAR:-default} and $$."""
    environ = environ or {}

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return environ.get(match.group("name")) or match.group("default") or ""

    return _VARIABLE.sub(substitute, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _workers(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services.items() if _command(svc)[:1] == ["worker"]}


def _published(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """Container port -> (host address, host port), from the short syntax [IP:]HOST:CONTAINER."""
    out = {}
    for spec in service.get("ports", []):
        parts = interpolate(str(spec)).split(":")
        assert len(parts) == 3, f"publish {spec!r} on an explicit address (127.0.0.1:HOST:CONTAINER)"
        out[int(parts[2])] = (parts[0], int(parts[1]))
    return out


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: interpolate(str(value)) for key, value in env.items()}


def _listeners(text: str) -> dict[str, tuple[str, int]]:
    """``A://host:1,B://:2`` -> {"A": ("host", 1), "B": ("", 2)}."""
    out = {}
    for item in interpolate(text).split(","):
        name, _, address = item.partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def test_the_services_are_kafka_redis_two_workers_and_the_sink(services: dict[str, dict[str, Any]]) -> None:
    assert {"kafka", "redis"} <= services.keys()
    assert len(_workers(services)) == 2
    sinks = [name for name, svc in services.items() if _command(svc)[:2] == ["sink", "webhook"]]
    assert len(sinks) == 1
    assert set(services) == {"kafka", "redis", *_workers(services), *sinks}


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name}: no image"
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{name}: {image} is not pinned to a version"
    assert services["kafka"]["image"] == "apache/kafka:3.9.1"
    assert services["redis"]["image"].startswith("redis:7.")
    for name, service in services.items():
        if "build" in service:  # our image: built from deploy/Dockerfile and tagged with the project version
            assert service["image"] == f"npspulse:{version}", name
            assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == (
                ROOT / "deploy" / "Dockerfile")


def test_every_service_has_a_health_check(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name}: no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1, name
        assert check.get("interval") and check.get("retries"), name
    assert services["kafka"]["healthcheck"]["test"][1] == "/opt/kafka/bin/kafka-broker-api-versions.sh"
    assert services["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]


def test_workers_check_health_on_their_own_web_port(services: dict[str, dict[str, Any]]) -> None:
    for name, service in _workers(services).items():
        args = _parser().parse_args(_command(service))
        check = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{args.web_port}/health" in check, name
        assert "urllib.request" in check, name


def test_services_start_after_their_dependencies_are_healthy(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on needs the long form with a condition"
        for dependency, spec in depends.items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert spec == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert "healthcheck" in services[dependency]
    for name in _workers(services):
        assert set(services[name]["depends_on"]) == {"kafka", "redis"}
    sink = next(svc for svc in services.values() if _command(svc)[:1] == ["sink"])
    assert "kafka" in sink["depends_on"]


def test_kafka_has_a_listener_for_the_network_and_one_for_the_host(services: dict[str, dict[str, Any]]) -> None:
    env = _environment(services["kafka"])
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "CLUSTER_ID" in env and "KAFKA_ZOOKEEPER_CONNECT" not in env
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    bound = _listeners(env["KAFKA_LISTENERS"])
    hosts = {host for host, _ in advertised.values()}
    assert hosts == {"kafka", "localhost"}, advertised
    published = _published(services["kafka"])
    internal = next(name for name, (host, _) in advertised.items() if host == "kafka")
    assert bound[internal][1] == advertised[internal][1]  # containers connect straight to it
    # The host listener is published on loopback at the port it advertises, the default config's localhost:9092.
    host_listener = next(name for name, (host, _) in advertised.items() if host == "localhost")
    assert advertised[host_listener][1] == 9092
    assert published[bound[host_listener][1]] == ("127.0.0.1", 9092)
    assert interpolate(services["kafka"]["ports"][0], {"NPSPULSE_KAFKA_HOST_PORT": "29092"}) == "127.0.0.1:29092:9092"
    assert _listeners(interpolate(services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"],
                                  {"NPSPULSE_KAFKA_HOST_PORT": "29092"}))[host_listener] == ("localhost", 29092)
    assert load_config(None, environ={}).kafka.bootstrap_servers == "localhost:9092"
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in bound and controller not in advertised
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    assert f"1@kafka:{bound[controller][1]}" == env["KAFKA_CONTROLLER_QUORUM_VOTERS"]


def test_redis_is_published_on_loopback_at_the_default_address(services: dict[str, dict[str, Any]]) -> None:
    assert _published(services["redis"]) == {6379: ("127.0.0.1", 6379)}
    assert load_config(None, environ={}).redis.url == "redis://localhost:6379/0"


def test_workers_connect_to_the_kafka_and_redis_services(services: dict[str, dict[str, Any]]) -> None:
    internal = next((host, port) for host, port in
                    _listeners(_environment(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]).values() if host == "kafka")
    for name, service in [*_workers(services).items(),
                          *((n, s) for n, s in services.items() if _command(s)[:1] == ["sink"])]:
        env = _environment(service)
        assert env["NPSPULSE_KAFKA_BOOTSTRAP"] == f"{internal[0]}:{internal[1]}", name
    for name, service in _workers(services).items():
        redis = urlsplit(_environment(service)["NPSPULSE_REDIS_URL"])
        assert (redis.scheme, redis.hostname, redis.port or 6379) == ("redis", "redis", 6379), name


def test_worker_commands_are_valid_and_distinct(services: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    ids, ports = set(), set()
    for name, service in _workers(services).items():
        args = _parser().parse_args(_command(service))
        assert args.command == "worker" and args.loglevel == "info"
        assert args.worker_id and args.web_port, name
        ids.add(args.worker_id)
        ports.add(args.web_port)
        mounts = {target: source for source, target, *_ in (str(v).split(":") for v in service["volumes"])}
        source = ROOT / mounts[str(args.config)]
        assert source.is_file(), f"{name} mounts {source}, which does not exist"
        config = load_config(source, environ=_environment(service))
        assert config.kafka.bootstrap_servers == _environment(service)["NPSPULSE_KAFKA_BOOTSTRAP"]
        host = args.web_host or config.worker.web_host
        assert host == "0.0.0.0", f"{name}: the web server must listen beyond loopback to be published"
        assert _published(service) == {args.web_port: ("127.0.0.1", args.web_port)}, name
    assert len(ids) == 2 and len(ports) == 2
    # The partitions the workers share: host-side `npspulse produce` (default config) creates topics with the
    # same count, or the workers would refuse them.
    config = load_config(ROOT / "deploy" / "compose" / "npspulse.toml", environ={})
    assert config.kafka.partitions == load_config(None, environ={}).kafka.partitions >= len(ids)


def test_sink_command_is_the_webhook_sink(services: dict[str, dict[str, Any]]) -> None:
    sink = next(svc for svc in services.values() if _command(svc)[:1] == ["sink"])
    assert _command(sink) == SINK_COMMAND
    assert interpolate(SINK_COMMAND[5]) == "http://host.docker.internal:8080/alerts"
    assert interpolate(SINK_COMMAND[5], {"NPSPULSE_ALERT_WEBHOOK_URL": "https://hooks.example.com/x"}) == (
        "https://hooks.example.com/x")
    assert "host.docker.internal:host-gateway" in sink.get("extra_hosts", [])
    commands = next(a for a in _parser()._actions if a.dest == "command").choices
    if "sink" in commands:  # once `npspulse sink` exists, the command must parse with it
        _parser().parse_args([interpolate(part) for part in SINK_COMMAND])


def test_interpolation_helper() -> None:
    assert interpolate("a${X:-1}b${Y}c$$") == "a1bc$"
    assert interpolate("${X:-1}", {"X": "2"}) == "2"
