"""Round trips through the real Redis started by `make test` (no mocks)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
import redis.asyncio as aioredis

pytestmark = pytest.mark.redis

N_CUSTOMERS = 200


def _profile(i: int) -> dict[str, str]:
    return {
        "customer_id": f"cust-{i:04d}",
        "segment": ["promoter", "passive", "detractor"][i % 3],
        "nps_30d": f"{(i * 7) % 201 - 100}",
        "last_score": str(i % 11),
        "region": ["EU", "NA", "APAC"][i % 3],
        "note": "zufrieden ✓" if i % 2 else "",
    }


def test_sync_pipeline_hash_roundtrip(redis_url: str) -> None:
    prefix = f"npspulse:test:{uuid.uuid4().hex}:"
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        expected = {f"{prefix}cust:{i:04d}": _profile(i) for i in range(N_CUSTOMERS)}
        with r.pipeline(transaction=False) as pipe:
            for key, mapping in expected.items():
                pipe.hset(key, mapping=mapping)
            assert pipe.execute() == [len(m) for m in expected.values()]

        keys = list(expected)
        with r.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hgetall(key)
            got = dict(zip(keys, pipe.execute(), strict=True))
        assert got == expected
        assert sorted(r.scan_iter(match=f"{prefix}*", count=1000)) == sorted(keys)
    finally:
        stale = list(r.scan_iter(match=f"{prefix}*", count=1000))
        if stale:
            r.delete(*stale)
        assert not list(r.scan_iter(match=f"{prefix}*", count=1000))
        r.close()


def test_asyncio_roundtrip(redis_url: str) -> None:
    prefix = f"npspulse:test:{uuid.uuid4().hex}:"

    async def scenario() -> None:
        r = aioredis.from_url(redis_url, decode_responses=True)
        try:
            assert await r.ping() is True
            expected = {f"{prefix}cust:{i:04d}": _profile(i) for i in range(50)}
            async with r.pipeline(transaction=True) as pipe:
                for key, mapping in expected.items():
                    pipe.hset(key, mapping=mapping)
                    pipe.expire(key, 300)
                await pipe.execute()
            async with r.pipeline(transaction=False) as pipe:
                for key in expected:
                    pipe.hgetall(key)
                got = await pipe.execute()
            assert dict(zip(expected, got, strict=True)) == expected

            counter = f"{prefix}detractors"
            assert await asyncio.gather(*(r.incr(counter) for _ in range(20))) is not None
            assert await r.get(counter) == "20"
        finally:
            stale = [k async for k in r.scan_iter(match=f"{prefix}*", count=1000)]
            if stale:
                await r.delete(*stale)
            close = getattr(r, "aclose", None) or r.close  # aclose() since redis-py 5.0.1
            await close()

    asyncio.run(scenario())
