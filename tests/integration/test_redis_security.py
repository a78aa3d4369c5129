"""Redis with a password and TLS, for real: a private redis-server with --requirepass and a TLS port (a
throwaway CA and server certificate made with openssl). Every client connects with the secret from the
environment or a secrets file; a wrong one fails with a clear message that never carries the secret."""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from processors.config import ConfigError, RedisSettings
from processors.nps import NpsCounts
from processors.windows import WindowResult
from streams.cli import main
from streams.client import produce_files
from streams.delivery_store import DeliveryStore, DeliveryStoreError
from streams.redis_connect import check_credentials
from streams.redis_store import RedisStore, StoreUnavailable
from streams.settings import load_config
from streams.simulate import SimulationSettings, simulate_to_file
from tests.ports import free_port

pytestmark = [pytest.mark.redis]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@dataclass
class SecureRedis:
    port: int  # plaintext, password required
    tls_port: int  # TLS, password required
    password: str
    cafile: str
    wrong_cafile: str
    process: subprocess.Popen

    def config(self, tmp: Path, *, tls: bool, extra: str = "") -> Path:
        """A config file naming only the URL (no secret) and, for TLS, the CA."""
        url = f"rediss://127.0.0.1:{self.tls_port}/0" if tls else f"redis://127.0.0.1:{self.port}/0"
        path = tmp / f"redis-{'tls' if tls else 'plain'}.toml"
        cafile = f"ssl_cafile = {json.dumps(self.cafile)}\n" if tls else ""
        path.write_text(f"[kafka]\npartitions = 3\n\n[redis]\nurl = {json.dumps(url)}\n{cafile}{extra}")
        return path


@pytest.fixture
def secure_redis(tmp_path: Path):
    binary = shutil.which("redis-server")
    if binary is None or shutil.which("openssl") is None:
        pytest.fail("redis-server and openssl are needed: run via `make test`")
    tls = tmp_path / "tls"
    tls.mkdir()
    for name in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN=npspulse-test-{name}",
                 "-keyout", str(tls / f"{name}.key"), "-out", str(tls / f"{name}.pem"))
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(tls / "server.key"),
             "-out", str(tls / "server.csr"))
    (tls / "san.ext").write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")
    _openssl("x509", "-req", "-in", str(tls / "server.csr"), "-CA", str(tls / "ca.pem"), "-CAkey", str(tls / "ca.key"),
             "-CAcreateserial", "-days", "1", "-extfile", str(tls / "san.ext"), "-out", str(tls / "server.pem"))
    password = secrets.token_urlsafe(24)
    port, tls_port = free_port(), free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--tls-port", str(tls_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path), "--requirepass", password,
         "--tls-cert-file", str(tls / "server.pem"), "--tls-key-file", str(tls / "server.key"),
         "--tls-ca-cert-file", str(tls / "ca.pem"), "--tls-auth-clients", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(host="127.0.0.1", port=tls_port, password=password, ssl=True, ssl_ca_certs=str(tls / "ca.pem"))
    try:
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        else:
            pytest.fail("private redis-server with TLS did not start")
        yield SecureRedis(port, tls_port, password, str(tls / "ca.pem"), str(tls / "other-ca.pem"), process)
    finally:
        client.close()
        process.terminate()
        process.wait(10)


def _round_trip(config_path: Path, environ: dict[str, str]) -> None:
    """The worker's two stores, from the config: a snapshot and an opt-out written and read back."""
    config = load_config(config_path, environ=environ)
    check_credentials(config.redis)

    async def scenario() -> None:
        store, delivery = RedisStore.from_config(config), DeliveryStore.from_config(config)
        try:
            await store.save_snapshots([WindowResult("all", "5m", 0, 300_000, NpsCounts(1, 2, 3))], {})
            assert store.available and (await store.snapshots(["all"]))["all"]["5m.responses"] == "6"
            assert await delivery.opt_out(["c-1"]) in (0, 1)
            assert await delivery.opted_out() == ["c-1"]
        finally:
            await store.close()
            await delivery.close()

    asyncio.run(scenario())


def test_password_from_env_over_tls_and_from_a_secrets_file(secure_redis: SecureRedis, tmp_path: Path) -> None:
    _round_trip(secure_redis.config(tmp_path, tls=True), {"NPSPULSE_REDIS_PASSWORD": secure_redis.password})
    secret = tmp_path / "redis-password"
    secret.write_text(secure_redis.password + "\n")  # as a secret mount or `echo` writes it
    _round_trip(secure_redis.config(tmp_path, tls=False), {"NPSPULSE_REDIS_PASSWORD_FILE": str(secret)})
    _round_trip(secure_redis.config(tmp_path, tls=True, extra=f"password_file = {json.dumps(str(secret))}\n"), {})


def test_wrong_or_missing_password_and_unverified_tls_fail_clearly(secure_redis: SecureRedis, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str],
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    wrong = secrets.token_urlsafe(24)
    for environ in ({"NPSPULSE_REDIS_PASSWORD": wrong}, {}):
        config = load_config(secure_redis.config(tmp_path, tls=True), environ=environ)
        with pytest.raises(ConfigError) as caught:
            check_credentials(config.redis)
        assert "Redis refused the credentials" in str(caught.value) and wrong not in str(caught.value)

        async def scenario(config=config) -> None:
            store, delivery = RedisStore.from_config(config), DeliveryStore.from_config(config)
            try:
                with pytest.raises(StoreUnavailable):
                    await store.segment_ids()
                await store.save_snapshots([WindowResult("all", "5m", 0, 300_000, NpsCounts(1, 0, 0))], {})
                assert not store.available  # degraded, logged once
                with pytest.raises(DeliveryStoreError, match="refused the credentials"):
                    await delivery.opted_out()
            finally:
                await store.close()
                await delivery.close()

        asyncio.run(scenario())
    assert "AuthenticationError" in caplog.text
    # a server certificate from a CA the client does not trust
    config = load_config(secure_redis.config(tmp_path, tls=True), environ={"NPSPULSE_REDIS_PASSWORD": secure_redis.password})
    untrusted = RedisSettings(url=config.redis.url, password=config.redis.password, ssl_cafile=secure_redis.wrong_cafile)
    with pytest.raises(ConfigError, match="did not verify"):
        check_credentials(untrusted)
    # the CLI's Redis commands
    path = secure_redis.config(tmp_path, tls=True)
    for password, code in ((wrong, 1), (secure_redis.password, 0)):
        with pytest.MonkeyPatch.context() as env:
            env.delenv("NPSPULSE_REDIS_URL", raising=False)  # the shared Redis of `make test`
            env.setenv("NPSPULSE_REDIS_PASSWORD", password)
            assert main(["optout", "--config", str(path), "list"]) == code
    out, err = capsys.readouterr()
    assert "refused the credentials" in err
    for text in (out, err, caplog.text):
        assert secure_redis.password not in text and wrong not in text


def test_check_config_masks_the_redis_password(secure_redis: SecureRedis, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = secure_redis.config(tmp_path, tls=True)
    with pytest.MonkeyPatch.context() as env:
        env.delenv("NPSPULSE_REDIS_URL", raising=False)
        env.setenv("NPSPULSE_REDIS_PASSWORD", secure_redis.password)
        env.setenv("NPSPULSE_REDIS_PASSWORD_FILE", "/run/secrets/redis-password")
        assert main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert secure_redis.password not in out + err
    assert '# password = "********"  # from NPSPULSE_REDIS_PASSWORD' in out
    assert 'password_file = "/run/secrets/redis-password"  # from NPSPULSE_REDIS_PASSWORD_FILE' in out
    assert f"ssl_cafile = {json.dumps(secure_redis.cafile)}" in out
    (tmp_path / "bad.toml").write_text('[redis]\nurl = "redis://h:6379/0"\npassword = "x"\n')
    assert main(["check-config", str(tmp_path / "bad.toml")]) == 2
    assert "secrets do not belong in the config file" in capsys.readouterr().err


@pytest.mark.kafka
def test_worker_uses_the_secret_and_refuses_a_wrong_one(secure_redis: SecureRedis, deployment, tmp_path: Path) -> None:
    config_path = secure_redis.config(tmp_path, tls=True)
    deployment.config_path.write_text(config_path.read_text())
    deployment.env["NPSPULSE_REDIS_URL"] = f"rediss://127.0.0.1:{secure_redis.tls_port}/0"
    deployment.env["NPSPULSE_REDIS_PASSWORD"] = secure_redis.password
    deployment.config = load_config(deployment.config_path, environ=deployment.env)

    wrong = secrets.token_urlsafe(24)
    refused = deployment.start_worker("refused", NPSPULSE_REDIS_PASSWORD=wrong)
    assert refused.wait(60) == 2
    assert "Redis refused the credentials" in deployment.log("refused")
    assert wrong not in deployment.log("refused") and secure_redis.password not in deployment.log("refused")

    stream = tmp_path / "stream.jsonl"
    simulate_to_file(SimulationSettings(customers=200, duration_ms=2 * 3_600_000, answers_per_minute=10, seed=3,
                                        history_days=2), stream)
    assert produce_files([stream], deployment.config, progress=False).failed == 0
    worker = deployment.start_worker()
    args = list(worker.args)  # type: ignore[arg-type]
    url = f"http://127.0.0.1:{args[args.index('--web-port') + 1]}/api/segments"
    deadline, body = time.monotonic() + 180, {}
    while time.monotonic() < deadline and worker.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            body = {}
        if body.get("count"):
            break
        time.sleep(2)
    assert body.get("count"), deployment.log()[-3000:]  # snapshots written and read over TLS with the password
    assert "Redis unreachable" not in deployment.log()
    assert secure_redis.password not in deployment.log()
