"""`npspulse worker`: the Faust worker running the pipeline (a thin wrapper over Faust's own Worker)."""

from __future__ import annotations

from faust import Worker

from processors.config import Config
from streams.app import build_app
from streams.client import ensure_topics
from streams.pipeline import Pipeline
from streams.redis_store import RedisStore
from streams.web import register_api


def run_worker(config: Config, *, loglevel: str = "info", web_port: int | None = None, web_host: str | None = None,
               worker_id: str | None = None, use_redis: bool = True) -> None:
    ensure_topics(config)  # before Faust: its consumer would let the broker auto-create them with 1 partition
    app = build_app(config, web_port=web_port, web_host=web_host, client_id=worker_id)
    store = RedisStore(config.redis.url) if use_redis else None
    Pipeline(app, config, store)
    register_api(app, config, store)
    worker = Worker(app, loglevel=loglevel)
    worker.execute_from_commandline()
