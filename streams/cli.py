"""The `npspulse` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from processors.config import Config, ConfigError
from processors.timeparse import parse_duration_ms, parse_rfc3339_ms
from streams.settings import load_config

T = TypeVar("T")

def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ConfigError as error:
        print(f"npspulse: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npspulse", description="Real-time loyalty segmentation on NPS streams.")
    commands = parser.add_subparsers(dest="command", required=True)

    sim = commands.add_parser("simulate", help="write a synthetic stream of purchases and answers (JSONL)")
    sim.add_argument("--customers", type=int, default=20_000, help="population size (default 20000)")
    sim.add_argument("--duration", type=_duration, default="24h", help="simulated time after the start (default 24h)")
    sim.add_argument("--rate", type=float, default=60.0, help="answers per minute on average (default 60)")
    sim.add_argument("--start", type=_timestamp, default=None, help="RFC 3339 start (default 2026-03-02T00:00:00Z)")
    sim.add_argument("--seed", type=int, default=1, help="random seed: same seed, same stream (default 1)")
    sim.add_argument("--incident", action="append", default=[], metavar="SPEC",
                     help="'region=EU|channel=app @ +14h for 60m +30pp' (repeatable)")
    sim.add_argument("--jitter", type=_duration, default="20s", help="max arrival delay behind event time (default 20s)")
    sim.add_argument("--malformed-rate", type=float, default=0.0, help="share of answers sent malformed (default 0)")
    sim.add_argument("--out", default="-", help="output JSONL file, '-' for stdout (default)")
    sim.set_defaults(run=_simulate)

    rep = commands.add_parser("replay", help="run the engine in-process over JSONL files (no Kafka, no Redis)")
    rep.add_argument("files", nargs="+", type=Path, help="JSONL files with 'type': 'survey' | 'purchase' lines")
    rep.add_argument("--config", type=Path, default=None, help="TOML config (default ./npspulse.toml or built-in)")
    rep.add_argument("--out-dir", type=Path, default=Path("out/replay"), help="where output JSONL goes")
    rep.add_argument("--top", type=int, default=15, help="segments listed in the summary (default 15)")
    rep.add_argument("--no-progress", action="store_true", help="no progress bar")
    rep.add_argument("--optout", type=Path, default=None, metavar="FILE",
                     help="opted-out customer ids (one per line, '#' comments, or a CSV with a customer_id "
                          "column): they get no trigger")
    rep.add_argument("--report", type=Path, default=None, metavar="FILE",
                     help="also write a self-contained HTML report (segment table, NPS charts, alerts) here")
    rep.set_defaults(run=_replay)

    show = commands.add_parser("config", help="print the built-in default config (TOML, documented)")
    show.set_defaults(run=_show_config)

    check = commands.add_parser("check-config", help="validate a config as the worker does and print the effective "
                                                     "settings (environment overrides applied, secrets masked)")
    check.add_argument("file", type=Path, nargs="?", default=None,
                       help="TOML config (default ./npspulse.toml or built-in)")
    check.set_defaults(run=_check_config)

    work = commands.add_parser("worker", help="run the streaming worker (Faust) on Kafka")
    work.add_argument("--config", type=Path, default=None, help="TOML config (default ./npspulse.toml or built-in)")
    work.add_argument("-l", "--loglevel", default="info", help="log level (default info)")
    work.add_argument("--web-port", type=int, default=None, help="web server port (default from config: 6066)")
    work.add_argument("--web-host", default=None, help="web server bind address (default 127.0.0.1)")
    work.add_argument("--worker-id", default=None, help="client id of this worker in broker logs and metrics")
    work.add_argument("--no-redis", action="store_true", help="run without Redis (enrichment from events only)")
    work.set_defaults(run=_worker)

    prod = commands.add_parser("produce", help="send JSONL events to Kafka, keyed by customer id")
    prod.add_argument("files", nargs="+", type=Path, help="JSONL files; '-' reads standard input")
    prod.add_argument("--topic", default=None,
                      help="surveys, purchases or a full topic name (default: each line's 'type' decides)")
    prod.add_argument("--config", type=Path, default=None)
    prod.add_argument("--no-progress", action="store_true")
    prod.set_defaults(run=_produce)

    tail = commands.add_parser("tail", help="print records of an output topic as they arrive")
    tail.add_argument("topic", help="alerts, retarget, dead-letter or a full topic name")
    tail.add_argument("--from-beginning", action="store_true", help="start at the oldest record")
    tail.add_argument("--json", action="store_true", help="JSON lines instead of a readable line per record")
    tail.add_argument("--group", default=None, help="consumer group (default: a new one each time)")
    tail.add_argument("--max", type=int, default=None, help="stop after this many records")
    tail.add_argument("--timeout", type=float, default=None, help="stop after this many seconds without records")
    tail.add_argument("--config", type=Path, default=None)
    tail.set_defaults(run=_tail)

    ev = commands.add_parser("evaluate", help="measure detection quality on simulated fleets (prints a markdown report)")
    ev.add_argument("--quick", action="store_true", help="smoke-size run (seconds) instead of the full one (minutes)")
    ev.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    ev.add_argument("--segments", type=_int_list, default=None, metavar="N,N,...",
                    help="fleet sizes to evaluate (default 10,100,1000; quick: 10)")
    ev.add_argument("--workers", type=int, default=None, help="worker processes (default 2; quick: 1)")
    ev.add_argument("--out", type=Path, default=None, help="also write the report here, e.g. docs/detection.md")
    ev.add_argument("--json", type=Path, default=None, help="also write the raw results as JSON")
    ev.set_defaults(run=_evaluate)

    sink = commands.add_parser("sink", help="deliver output records to other systems")
    sinks = sink.add_subparsers(dest="sink", required=True)
    hook = sinks.add_parser("webhook", help="POST each record of a topic as JSON to a URL (at-least-once, retries, "
                                            "dead letters)")
    hook.add_argument("--topic", required=True, help="retarget, alerts or a full topic name")
    hook.add_argument("--url", required=True, help="http(s) URL to POST to (only its scheme, host and port are logged)")
    hook.add_argument("--format", choices=("json", "slack"), default="json",
                      help="json: the record as on the topic; slack: a Slack message (default json)")
    hook.add_argument("--batch", type=int, default=1, help="records per request, as a JSON array when > 1 (default 1)")
    hook.add_argument("--group", default=None, help="consumer group (default: from the topic prefix, topic and URL)")
    hook.add_argument("--from-beginning", action="store_true",
                      help="a group without committed offsets starts at the oldest record (default: the newest)")
    hook.add_argument("--timeout-seconds", type=float, default=10.0, help="connect and read timeout (default 10)")
    hook.add_argument("--max-attempts", type=int, default=10, help="requests per record before dead-lettering (default 10)")
    hook.add_argument("--max-retry-seconds", type=float, default=300.0,
                      help="time budget for retrying one record before dead-lettering (default 300)")
    hook.add_argument("--backoff-seconds", type=float, default=0.5,
                      help="first retry delay cap; doubles per retry, full jitter (default 0.5)")
    hook.add_argument("--max-backoff-seconds", type=float, default=30.0, help="retry delay cap (default 30)")
    secret = hook.add_mutually_exclusive_group()
    secret.add_argument("--secret-env", metavar="VAR", default=None,
                        help="sign bodies (X-Npspulse-Signature) with the secret in this environment variable")
    secret.add_argument("--secret-file", metavar="PATH", type=Path, default=None,
                        help="sign bodies with the secret in this file")
    hook.add_argument("--config", type=Path, default=None)
    hook.set_defaults(run=_sink_webhook)

    load = commands.add_parser("load-customers", help="import customer attributes (CSV or JSONL) into Redis")
    load.add_argument("file", type=Path)
    load.add_argument("--config", type=Path, default=None)
    load.set_defaults(run=_load_customers)

    optout = commands.add_parser("optout", help="consent: add, remove or list opted-out customers (Redis)")
    optout.add_argument("action", choices=("add", "remove", "list"),
                        help="add/remove customers; list all opted-out customers, or those of the ids given")
    optout.add_argument("customer_ids", nargs="*", metavar="CUSTOMER_ID")
    optout.add_argument("--file", type=Path, default=None,
                        help="more customer ids: one per line ('#' comments), or a CSV with a customer_id column")
    optout.add_argument("--config", type=Path, default=None)
    optout.set_defaults(run=_optout)

    audience = commands.add_parser("audience", help="campaign audiences: customers a campaign triggered (Redis)")
    audience_commands = audience.add_subparsers(dest="audience_command", required=True)
    export = audience_commands.add_parser("export", help="write a campaign's audience as CSV: customer_id, triggered_at")
    export.add_argument("campaign", help="campaign id, e.g. service-recovery")
    export.add_argument("--since", type=_timestamp, default=None, metavar="RFC3339",
                        help="only customers last triggered at or after this time")
    export.add_argument("--out", type=Path, default=None, metavar="FILE.csv", help="output file (default stdout)")
    export.add_argument("--config", type=Path, default=None)
    export.set_defaults(run=_audience_export)
    return parser


def _simulate(args: argparse.Namespace) -> int:
    from streams.simulate import SimulationSettings, parse_incident, simulate, write_jsonl

    try:
        incidents = tuple(parse_incident(text) for text in args.incident)
    except ValueError as error:
        print(f"npspulse simulate: {error}", file=sys.stderr)
        return 2
    settings = SimulationSettings(customers=args.customers, duration_ms=args.duration, answers_per_minute=args.rate,
                                  seed=args.seed, incidents=incidents, jitter_ms=args.jitter,
                                  malformed_rate=args.malformed_rate)
    if args.start is not None:
        settings.start_ms = args.start
    if args.out == "-":
        count = write_jsonl(simulate(settings), sys.stdout.buffer)
        sys.stdout.flush()
    else:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            count = write_jsonl(simulate(settings), out)
        print(f"npspulse simulate: wrote {count:,} events to {path}", file=sys.stderr)
    return 0


def _replay(args: argparse.Namespace) -> int:
    from streams.customers import CustomerFileError, read_customer_ids
    from streams.replay import replay
    from streams.report import render_summary, write_html_report

    config = load_config(args.config)
    missing = [str(path) for path in args.files if not path.is_file()]
    if missing:
        print(f"npspulse replay: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        optout = read_customer_ids(args.optout) if args.optout is not None else []
    except CustomerFileError as error:
        print(f"npspulse replay: {error}", file=sys.stderr)
        return 2
    result = replay(args.files, config.engine, args.out_dir, delivery=config.delivery, optout=optout,
                    progress=False if args.no_progress else None, keep_history=args.report is not None)
    print(render_summary(result, args.out_dir, top=args.top))
    if args.report is not None:
        write_html_report(result, args.report, ", ".join(path.name for path in args.files))
        print(f"HTML report -> {args.report}")
    return 0


def _worker(args: argparse.Namespace) -> int:
    from streams.worker import run_worker

    config = load_config(args.config)
    run_worker(config, loglevel=args.loglevel, web_port=args.web_port, web_host=args.web_host,
               worker_id=args.worker_id, use_redis=not args.no_redis)
    return 0


def _produce(args: argparse.Namespace) -> int:
    from streams.client import produce_files

    config = load_config(args.config)
    report = produce_files(args.files, config, topic=args.topic, progress=False if args.no_progress else None)
    sent = ", ".join(f"{count:,} to {topic}" for topic, count in sorted(report.sent.items())) or "nothing"
    rate = report.total / report.seconds if report.seconds else 0.0
    print(f"npspulse produce: sent {sent} in {report.seconds:.1f} s ({rate:,.0f} msg/s); "
          f"{report.unroutable} unroutable lines (no valid 'type') dead-lettered, {report.failed} failed", file=sys.stderr)
    return 1 if report.failed else 0


def _tail(args: argparse.Namespace) -> int:
    from streams.client import print_record, subscribe

    config = load_config(args.config)
    try:
        for record in subscribe(args.topic, config, group_id=args.group, from_beginning=args.from_beginning,
                                timeout=args.timeout, max_messages=args.max):
            print_record(record, not args.json, sys.stdout)
    except KeyboardInterrupt:
        return 0
    return 0


def _sink_webhook(args: argparse.Namespace) -> int:
    import logging

    from confluent_kafka import KafkaException

    from streams.webhook_sink import SinkError, SinkOptions, WebhookSink, read_secret, run_until_signalled

    config = load_config(args.config)
    options = SinkOptions(topic=args.topic, url=args.url, format=args.format, batch=args.batch, group_id=args.group,
                          from_beginning=args.from_beginning, timeout_seconds=args.timeout_seconds,
                          max_attempts=args.max_attempts, max_retry_seconds=args.max_retry_seconds,
                          backoff_seconds=args.backoff_seconds, max_backoff_seconds=args.max_backoff_seconds,
                          secret=read_secret(args.secret_env, args.secret_file))
    sink = WebhookSink(config, options)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run_until_signalled(sink)
    except (SinkError, KafkaException) as error:
        print(f"npspulse sink webhook: {error}", file=sys.stderr)
        return 1
    return 0


def _load_customers(args: argparse.Namespace) -> int:
    from streams.customers import CustomerFileError, load_customers

    config = load_config(args.config)
    try:
        count = load_customers(args.file, config.redis.url)
    except CustomerFileError as error:
        print(f"npspulse load-customers: {error}", file=sys.stderr)
        return 2
    print(f"npspulse load-customers: {count:,} customers loaded", file=sys.stderr)
    return 0


def _optout(args: argparse.Namespace) -> int:
    from streams.customers import CustomerFileError, read_customer_ids
    from streams.delivery_store import DeliveryStore

    config = load_config(args.config)
    ids = list(args.customer_ids)
    try:
        if args.file is not None:
            ids.extend(read_customer_ids(args.file))
    except CustomerFileError as error:
        print(f"npspulse optout: {error}", file=sys.stderr)
        return 2
    if args.action != "list" and not ids:
        print(f"npspulse optout {args.action}: give customer ids or --file", file=sys.stderr)
        return 2

    async def call(store: DeliveryStore) -> int | list[str]:
        if args.action == "add":
            return await store.opt_out(ids)
        if args.action == "remove":
            return await store.opt_in(ids)
        return await store.opted_out(ids or None)

    result = _on_delivery_store(config, "optout", call)
    if result is None:
        return 1
    if isinstance(result, list):
        for customer_id in result:
            print(customer_id)
        print(f"npspulse optout: {len(result):,} opted-out customers", file=sys.stderr)
    elif args.action == "add":
        print(f"npspulse optout: {result:,} added ({len(set(ids)) - result:,} already opted out)", file=sys.stderr)
    else:
        print(f"npspulse optout: {result:,} removed ({len(set(ids)) - result:,} were not opted out)", file=sys.stderr)
    return 0


def _on_delivery_store(config: Config, command: str, call: Callable[[Any], Awaitable[T]]) -> T | None:
    """Run one call on a DeliveryStore from the config and close it; None (reason printed) if Redis fails."""
    import asyncio

    from streams.delivery_store import DeliveryStore, DeliveryStoreError

    async def run() -> T:
        store = DeliveryStore.from_config(config)
        try:
            return await call(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except DeliveryStoreError as error:
        print(f"npspulse {command}: {error}", file=sys.stderr)
        return None


def _audience_export(args: argparse.Namespace) -> int:
    import contextlib
    import csv

    from processors.timeparse import format_rfc3339_ms
    from streams.delivery_store import DeliveryStore

    config = load_config(args.config)
    if args.campaign not in {rule.campaign_id for rule in config.engine.campaigns}:
        print(f"npspulse audience: note: {args.campaign!r} is not a configured campaign", file=sys.stderr)

    async def call(store: DeliveryStore) -> list[tuple[str, int]]:
        return await store.export_audience(args.campaign, since=args.since)

    rows = _on_delivery_store(config, "audience", call)
    if rows is None:
        return 1
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    out = args.out.open("w", newline="", encoding="utf-8") if args.out is not None else contextlib.nullcontext(sys.stdout)
    with out as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("customer_id", "triggered_at"))
        writer.writerows((customer_id, format_rfc3339_ms(at)) for customer_id, at in rows)
    where = f" to {args.out}" if args.out is not None else ""
    print(f"npspulse audience: {len(rows):,} customers of {args.campaign}{where}", file=sys.stderr)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import orjson

    from streams.evaluation import EvalConfig, evaluate
    from streams.evaluation_report import render

    config = EvalConfig.quick(args.seed) if args.quick else EvalConfig(seed=args.seed)
    if args.segments:
        config = replace(config, fleets=tuple(args.segments))
    if args.workers is not None:
        config = replace(config, workers=max(1, args.workers))
    results = evaluate(config, progress=lambda text: print(f"npspulse evaluate: {text}", file=sys.stderr))
    report = render(results)
    sys.stdout.write(report)
    for path, data in ((args.out, report.encode()), (args.json, orjson.dumps(results, option=orjson.OPT_SERIALIZE_NUMPY))):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    print(f"npspulse evaluate: done in {results['seconds']:.0f} s", file=sys.stderr)
    return 0


def _show_config(args: argparse.Namespace) -> int:
    from streams.settings import default_config_text

    sys.stdout.write(default_config_text())
    return 0


def _check_config(args: argparse.Namespace) -> int:
    import os

    from streams.effective import render_effective
    from streams.settings import LOCAL_CONFIG
    from streams.topics import check_credentials

    path = args.file if args.file is not None else (LOCAL_CONFIG if LOCAL_CONFIG.exists() else None)
    source = str(path) if path is not None else "the packaged default config"
    try:
        config = load_config(path)
        check_credentials(config.kafka)  # what every Kafka client checks when the worker starts
    except ConfigError as error:
        print(f"npspulse check-config: {source}: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(render_effective(config, os.environ, source))
    print(f"npspulse check-config: {source} is valid", file=sys.stderr)
    return 0


def _duration(text: str) -> int:
    try:
        return parse_duration_ms(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive integers, e.g. 10,100,1000")
    return values


def _timestamp(text: str) -> int:
    try:
        return parse_rfc3339_ms(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


if __name__ == "__main__":
    raise SystemExit(main())
