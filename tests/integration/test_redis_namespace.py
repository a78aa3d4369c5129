"""Two deployments with different topic prefixes on one real Redis: their snapshots, window history and alert
feeds never meet; the default prefix keeps the keys it always had."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest

from processors.nps import NpsCounts
from processors.windows import WindowResult
from streams.redis_store import RedisStore
from streams.settings import load_config

pytestmark = pytest.mark.redis


def _store(redis_url: str, prefix: str) -> RedisStore:
    config = load_config(None, environ={"NPSPULSE_REDIS_URL": redis_url, "NPSPULSE_KAFKA_TOPIC_PREFIX": prefix})
    return RedisStore.from_config(config)


def test_stores_of_two_prefixes_do_not_see_each_other(redis_url: str) -> None:
    tag = uuid.uuid4().hex[:10]
    segment = "region=EU"  # the same segment id in both deployments

    async def scenario() -> None:
        blue, green = _store(redis_url, f"blue{tag}."), _store(redis_url, f"green{tag}-")
        try:
            assert (blue.namespace, green.namespace) == (f"blue{tag}", f"green{tag}")
            await blue.save_snapshots([WindowResult(segment, "5m", 0, 300_000, NpsCounts(1, 0, 0))], {})
            await green.save_snapshots([WindowResult(segment, "5m", 0, 300_000, NpsCounts(0, 0, 7))], {})
            alert = {"id": f"{tag}-a", "type": "alert.opened", "alert_id": tag, "incident_id": tag,
                     "segment_id": segment, "severity": "sev-1", "at": 10**15}
            await blue.save_alerts([alert])

            assert await blue.segment_ids() == [segment] and await green.segment_ids() == [segment]
            assert (await blue.snapshots([segment]))[segment]["5m.detractors"] == "1"
            assert (await green.snapshots([segment]))[segment]["5m.detractors"] == "0"
            assert (await green.snapshots([segment]))[segment]["5m.promoters"] == "7"
            assert [w["detractors"] for w in await blue.window_history(segment)] == [1]
            assert [w["promoters"] for w in await green.window_history(segment)] == [7]
            assert [a["id"] for a in await blue.recent_alerts(None, 10)] == [alert["id"]]
            assert await green.recent_alerts(None, 10) == []
            assert "alert.state" not in (await green.snapshots([segment]))[segment]
            keys = {key async for key in blue._client.scan_iter(match=f"*{tag}*")}
            assert keys == {f"blue{tag}:segment:{segment}", f"blue{tag}:segments", f"blue{tag}:windows:{segment}",
                            f"blue{tag}:alerts", f"green{tag}:segment:{segment}", f"green{tag}:segments",
                            f"green{tag}:windows:{segment}"}
            await blue._client.delete(*keys)
        finally:
            await blue.close()
            await green.close()

    asyncio.run(scenario())


def test_default_prefix_keeps_the_npspulse_namespace(redis_url: str) -> None:
    config = load_config(None, environ={"NPSPULSE_REDIS_URL": redis_url})
    store = RedisStore.from_config(dataclasses.replace(config, kafka=dataclasses.replace(config.kafka,
                                                                                          topic_prefix="npspulse.")))
    try:
        assert (store.segment_key("all"), store.alert_feed_key) == ("npspulse:segment:all", "npspulse:alerts")
    finally:
        asyncio.run(store.close())
