"""The `npspulse` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from processors.config import ConfigError
from processors.timeparse import parse_duration_ms, parse_rfc3339_ms
from streams.settings import load_config


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
    rep.set_defaults(run=_replay)

    show = commands.add_parser("config", help="print the built-in default config (TOML, documented)")
    show.set_defaults(run=_show_config)
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
    from streams.replay import replay
    from streams.report import render_summary

    config = load_config(args.config)
    missing = [str(path) for path in args.files if not path.is_file()]
    if missing:
        print(f"npspulse replay: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    result = replay(args.files, config.engine, args.out_dir, progress=False if args.no_progress else None)
    print(render_summary(result, args.out_dir, top=args.top))
    return 0


def _show_config(args: argparse.Namespace) -> int:
    from streams.settings import default_config_text

    sys.stdout.write(default_config_text())
    return 0


def _duration(text: str) -> int:
    try:
        return parse_duration_ms(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _timestamp(text: str) -> int:
    try:
        return parse_rfc3339_ms(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


if __name__ == "__main__":
    raise SystemExit(main())
