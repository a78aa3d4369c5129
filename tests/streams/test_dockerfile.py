"""deploy/Dockerfile and .dockerignore, checked as text (no Docker engine): a pinned slim base, two stages,
no build tools in the final image, a non-root user, the npspulse entry point, port and health check."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_TOOLS = ("gcc", "g++", "make", "build-essential", "cmake", "clang", "python3-dev", "libc6-dev")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions((ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8"))


def _stages(steps: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, args in steps:
        if keyword == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((keyword, args))
    return stages


def _base_images(steps: list[tuple[str, str]]) -> list[str]:
    defaults = dict(args.split("=", 1) for keyword, args in steps if keyword == "ARG" and "=" in args)
    images = []
    for keyword, args in steps:
        if keyword == "FROM":
            image = args.split()[0]
            images.append(re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image))
    return images


def test_base_image_is_a_pinned_python_311_slim(dockerfile: list[tuple[str, str]]) -> None:
    images = _base_images(dockerfile)
    assert len(images) >= 2, "multi-stage: build the wheel, then install it on a clean image"
    for image in images:
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), image
        assert "latest" not in image


def test_final_stage_installs_wheels_from_the_build_stage(dockerfile: list[tuple[str, str]]) -> None:
    build, final = _stages(dockerfile)[0], _stages(dockerfile)[-1]
    name = build[0][1].split()[-1]
    assert build[0][1].split()[-2].upper() == "AS"
    assert any(k == "RUN" and "pip wheel" in a for k, a in build)
    final_text = " ".join(args for _, args in final)
    assert f"from={name}" in final_text or f"--from={name}" in final_text
    assert "--no-index" in final_text, "the final stage installs only the wheels built before"
    for keyword, args in final:
        if keyword == "RUN":
            words = set(re.split(r"[\s;&|]+", args))
            assert not words & set(BUILD_TOOLS), f"build tools in the final image: {args}"
            assert "apt-get" not in words, "the final image installs no system packages"


def test_runs_as_a_non_root_user(dockerfile: list[tuple[str, str]]) -> None:
    final = _stages(dockerfile)[-1]
    users = [args for keyword, args in final if keyword == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit(), "a numeric USER lets Kubernetes' runAsNonRoot verify it"
    position = max(i for i, (keyword, _) in enumerate(final) if keyword == "USER")
    assert all(keyword != "RUN" for keyword, _ in final[position:]), "nothing runs as root after USER"


def test_entrypoint_port_and_healthcheck(dockerfile: list[tuple[str, str]]) -> None:
    final = dict(_stages(dockerfile)[-1])
    assert json.loads(final["ENTRYPOINT"]) == ["npspulse"]
    assert json.loads(final["CMD"])[0] == "worker"
    assert final["EXPOSE"].split() == ["6066"]
    check = final["HEALTHCHECK"]
    assert "CMD" in check and "http://127.0.0.1:6066/health" in check


def test_no_latest_anywhere(dockerfile: list[tuple[str, str]]) -> None:
    assert not any(":latest" in args for _, args in dockerfile)


def _glob(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern: ``**`` spans directories, ``*`` and ``?`` stay within one path element."""
    regex = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
        regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return re.compile(regex)


def _ignored(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _glob(pattern.lstrip("!").rstrip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not negate
    return ignored


def test_dockerignore_sends_only_the_sources(dockerfile: list[tuple[str, str]]) -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    for path in (".venv/bin/python", ".git/HEAD", ".cache/kafka-libs/kafka.jar", "out/demo/stream.jsonl",
                 "tests/conftest.py", "processors/__pycache__/config.cpython-311.pyc", "docker-compose.yml"):
        assert _ignored(patterns, path), path
    copied = [src for keyword, args in dockerfile if keyword == "COPY" and "--from" not in args
              for src in args.split()[:-1]]
    assert copied
    for source in copied:
        path = ROOT / source
        assert path.exists(), source
        files = [p.relative_to(ROOT).as_posix() for p in ([path] if path.is_file() else path.rglob("*.py"))]
        assert files and not any(_ignored(patterns, f) for f in files), source
    assert not _ignored(patterns, "processors/npspulse.toml")  # package data the wheel needs
