"""`npspulse worker`: the Faust worker running the pipeline (a thin wrapper over Faust's own Worker)."""

from __future__ import annotations

import logging
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

log = logging.getLogger("npspulse.worker")


class _Worker(Worker):
    """Faust's Worker, closing the Redis clients once the app has stopped."""

    def __init__(self, app: Any, closing: list[RedisStore | DeliveryStore], **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._closing = closing

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        for client in self._closing:
            await client.close()


def learn_changelog_metadata(app: Any) -> None:
    """On every assignment, before agents run: make the producer fetch the metadata of every table's changelog.
    A table with ``use_partitioner`` (segments) asks the producer's metadata for its changelog partition
    synchronously; aiokafka only refreshes the topics it already sends to, so a changelog created after the
    producer's first metadata fetch stayed unknown and every write crashed the agent
    ("'NoneType' object is not iterable" in aiokafka's ``_partition``)."""
    async def fetch(sender: Any, assigned: Any, **kwargs: Any) -> None:
        producer = app.producer._ensure_producer()  # aiokafka's producer under Faust's
        for table in app.tables.values():
            topic = table.changelog_topic.get_topic_name()
            try:
                await producer.partitions_for(topic)
            except Exception as error:  # bounded by the request timeout; the writes then fail as before
                log.warning("producer metadata of %s not available (%s)", topic, type(error).__name__)
    app.on_partitions_assigned.connect(fetch)


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
    learn_changelog_metadata(app)
    register_api(app, config, store)
    worker = _Worker(app, [client for client in (store, delivery) if client is not None], loglevel=loglevel)
    worker.execute_from_commandline()
