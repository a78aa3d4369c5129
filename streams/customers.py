"""`npspulse load-customers`: import customer attributes into Redis (a hash per customer), in pipelined
batches. CSV with a header that has a ``customer_id`` column, or JSONL objects with ``customer_id``."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import orjson

from processors.config import RedisSettings
from processors.events import MAX_ID_CHARS

BATCH = 1000


class CustomerFileError(ValueError):
    pass


def read_customers(path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "customer_id" not in reader.fieldnames:
                raise CustomerFileError(f"{path}: the CSV header needs a customer_id column")
            for number, row in enumerate(reader, start=2):
                customer_id = (row.pop("customer_id") or "").strip()
                if not customer_id:
                    raise CustomerFileError(f"{path}:{number}: empty customer_id")
                yield customer_id, {k: v for k, v in row.items() if k and v not in (None, "")}
        return
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = orjson.loads(line)
            except orjson.JSONDecodeError as error:
                raise CustomerFileError(f"{path}:{number}: not JSON ({error})") from None
            customer_id = data.pop("customer_id", None) if isinstance(data, dict) else None
            if not isinstance(customer_id, str) or not customer_id:
                raise CustomerFileError(f"{path}:{number}: needs a string customer_id")
            if not all(isinstance(v, str) for v in data.values()):
                raise CustomerFileError(f"{path}:{number}: attribute values must be strings")
            yield customer_id, data


def load_customers(path: Path, settings: RedisSettings) -> int:
    """Write each customer's attributes to Redis (replacing what was there); returns the count."""
    import redis  # here, not at module level: `replay --optout` reads id files without Redis or Faust

    from streams.redis_connect import client_options
    from streams.redis_store import ATTRIBUTES_KEY

    client = redis.Redis.from_url(settings.url, **client_options(settings))
    count = 0
    pipe = client.pipeline(transaction=False)
    for customer_id, attributes in read_customers(path):
        key = ATTRIBUTES_KEY.format(customer_id)
        pipe.delete(key)
        if attributes:
            pipe.hset(key, mapping=attributes)
        count += 1
        if count % BATCH == 0:
            pipe.execute()
    pipe.execute()
    client.close()
    return count


def read_customer_ids(path: Path) -> list[str]:
    """Customer ids from a file: a CSV (``.csv``) with a ``customer_id`` column, else one id per line (blank
    lines and ``#`` comments skipped)."""
    try:
        if path.suffix.lower() == ".csv":
            return [customer_id for customer_id, _ in read_customers(path)]
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise CustomerFileError(f"{path}: {error.strerror}") from None
    ids = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if len(text) > MAX_ID_CHARS:
            raise CustomerFileError(f"{path}:{number}: a customer id is at most {MAX_ID_CHARS} characters")
        ids.append(text)
    return ids
