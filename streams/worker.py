"""`npspulse worker`: the Faust worker running the pipeline (a thin wrapper over Faust's own Worker)."""

from __future__ import annotations

from typing import Any

from faust import Worker

from processors.config import Config
from streams.app import build_app
from streams.client import ensure_topics
from streams.delivery_store import DeliveryStore
from streams.pipeline import Pipeline
from streams.redis_connect import check_credentials as check_redis_credentials
from streams.redis_store import RedisStore
from streams.web import register_api


class _Worker(Worker):
    """Faust's Worker, closing the Redis clients once the app has stopped."""

    def __init__(self, app: Any, closing: list[RedisStore | DeliveryStore], **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._closing = closing

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        for client in self._closing:
            await client.close()


def run_worker(config: Config, *, loglevel: str = "info", web_port: int | None = None, web_host: str | None = None,
               worker_id: str | None = None, use_redis: bool = True) -> None:
    """Run a worker. With Redis, triggers are admitted by the shared delivery store; without (``use_redis``
    False), by a delivery policy in this worker's memory: caps and de-duplication are then per worker."""
    if use_redis:
        check_redis_credentials(config.redis)  # a refused password is a config error: fail now, not degrade
    ensure_topics(config)  # before Faust: its consumer would let the broker auto-create them with 1 partition
    app = build_app(config, web_port=web_port, web_host=web_host, client_id=worker_id)
    store = RedisStore.from_config(config) if use_redis else None
    delivery = DeliveryStore.from_config(config) if use_redis else None
    Pipeline(app, config, store, delivery)
    register_api(app, config, store)
    worker = _Worker(app, [client for client in (store, delivery) if client is not None], loglevel=loglevel)
    worker.execute_from_commandline()
