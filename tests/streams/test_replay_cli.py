"""The embedded runner and the CLI end to end, in-process (no Kafka, no Redis needed)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from streams.cli import main

INCIDENT = "region=EU|channel=app @ +10h for 60m +30pp"


@pytest.fixture(scope="module")
def stream_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sim") / "stream.jsonl"
    code = main(["simulate", "--customers", "3000", "--duration", "14h", "--rate", "40", "--seed", "11",
                 "--incident", INCIDENT, "--malformed-rate", "0.01", "--out", str(path)])
    assert code == 0
    return path


def _read(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_simulate_is_deterministic_per_seed(tmp_path: Path) -> None:
    args = ["simulate", "--customers", "200", "--duration", "2h", "--rate", "10", "--incident", INCIDENT]
    first, second, other = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    assert main([*args, "--seed", "5", "--out", str(first)]) == 0
    assert main([*args, "--seed", "5", "--out", str(second)]) == 0
    assert main([*args, "--seed", "6", "--out", str(other)]) == 0
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()


def test_replay_accounts_for_every_line_and_alerts_the_incident(stream_file: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    assert main(["replay", str(stream_file), "--out-dir", str(out_dir), "--no-progress"]) == 0
    summary = capsys.readouterr().out

    lines = [line for line in stream_file.read_bytes().splitlines() if line.strip()]
    dead = _read(out_dir / "dead-letter.jsonl")
    windows = _read(out_dir / "windows.jsonl")
    counted = sum(w["responses"] for w in windows if w["segment_id"] == "all" and w["window"] == "5m")
    purchases = sum(1 for line in lines if b'"type":"purchase"' in line)
    # Every line is a counted answer, a purchase, or a dead letter: nothing is lost.
    assert counted + purchases + len(dead) == len(lines)
    assert len(dead) > 10
    assert all(record["reason"] and record["raw"] for record in dead)
    assert {record["field"] for record in dead} >= {"score", "customer_id", ""}

    alerts = _read(out_dir / "alerts.jsonl")
    incident_alerts = [a for a in alerts if a["segment_id"] == "region=EU|channel=app" and a["type"] == "alert.opened"]
    assert incident_alerts, summary
    opened = incident_alerts[0]["at"]
    assert 10 * 3_600_000 <= opened % 86_400_000 < 11 * 3_600_000  # inside the incident hour
    assert "region=EU|channel=app" in summary and "service-recovery" in summary

    triggers = _read(out_dir / "triggers.jsonl")
    recovery = [t for t in triggers if t["campaign_id"] == "service-recovery"]
    assert recovery and all(t["loyalty"] == "detractor" for t in recovery)
    assert {t["alert_id"] for t in recovery} <= {a["alert_id"] for a in alerts}


def test_replay_is_repeatable(stream_file: Path, tmp_path: Path) -> None:
    for name in ("one", "two"):
        assert main(["replay", str(stream_file), "--out-dir", str(tmp_path / name), "--no-progress"]) == 0
    for output in ("alerts.jsonl", "triggers.jsonl", "windows.jsonl", "dead-letter.jsonl"):
        assert (tmp_path / "one" / output).read_bytes() == (tmp_path / "two" / output).read_bytes()


def test_bad_config_stops_start_up_naming_the_field(tmp_path: Path, stream_file: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "npspulse.toml"
    config.write_text('[windows]\ngrace = "two minutes"\n')
    code = main(["replay", str(stream_file), "--config", str(config), "--out-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "windows.grace" in err and "Fix:" in err


def test_comments_never_reach_the_summary(stream_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from streams.simulate import COMMENTS

    assert main(["replay", str(stream_file), "--out-dir", str(tmp_path / "o"), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert not any(comment in captured.out or comment in captured.err for comment in COMMENTS)


def _summary_row(summary: str, campaign: str) -> list[str]:
    """The cells of a campaign's row in the summary's trigger table."""
    section = summary[summary.index("Re-targeting triggers"):]
    row = next(line for line in section.splitlines() if line.split()[:1] == [campaign])
    return row.split()


def test_replay_writes_sent_triggers_only_and_counts_the_capped(stream_file: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "npspulse.toml"
    config.write_text('[delivery]\nmax_per_customer = 2\nperiod = "1d"\n\n'
                      '[[campaigns]]\nid = "service-recovery"\non = "alert"\nloyalty = ["detractor"]\n\n'
                      '[[campaigns]]\nid = "referral-ask"\non = "answer"\nloyalty = ["promoter"]\n'
                      'cap = { max = 1, period = "1d" }\n')
    out_dir = tmp_path / "out"
    assert main(["replay", str(stream_file), "--config", str(config), "--out-dir", str(out_dir), "--no-progress"]) == 0
    summary = capsys.readouterr().out
    triggers = _read(out_dir / "triggers.jsonl")
    assert len({t["id"] for t in triggers}) == len(triggers)
    per_customer = Counter(t["customer_id"] for t in triggers)
    assert max(per_customer.values()) <= 2  # 14 hours: one day at most
    referrals = Counter(t["customer_id"] for t in triggers if t["campaign_id"] == "referral-ask")
    assert max(referrals.values()) == 1
    # The summary: sent (= the file), customers, capped (campaign cap / customer cap), opted out, duplicates.
    _, sent, customers, capped, split, opted_out, _ = _summary_row(summary, "referral-ask")
    assert int(sent.replace(",", "")) == sum(referrals.values())
    assert int(customers.replace(",", "")) == len(referrals)
    by_campaign, by_customer = (int(n.replace(",", "")) for n in split.strip("()").split("/"))
    assert by_campaign > 0 and int(capped.replace(",", "")) == by_campaign + by_customer
    assert opted_out == "0"
    recovery = _summary_row(summary, "service-recovery")
    assert int(recovery[1].replace(",", "")) == sum(1 for t in triggers if t["campaign_id"] == "service-recovery")
    assert int(recovery[3].replace(",", "")) > 0  # detractors already sent two triggers that day


def test_replay_optout_file_holds_back_those_customers(stream_file: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "plain"
    assert main(["replay", str(stream_file), "--out-dir", str(plain), "--no-progress"]) == 0
    capsys.readouterr()
    before = _read(plain / "triggers.jsonl")
    per_customer = Counter(t["customer_id"] for t in before)
    chosen = [customer for customer, _ in per_customer.most_common(3)]
    optout = tmp_path / "optout.txt"
    optout.write_text("# opted out by email\n" + "\n".join(chosen) + "\n")
    out_dir = tmp_path / "out"
    assert main(["replay", str(stream_file), "--optout", str(optout), "--out-dir", str(out_dir), "--no-progress"]) == 0
    summary = capsys.readouterr().out
    after = _read(out_dir / "triggers.jsonl")
    assert not [t for t in after if t["customer_id"] in chosen]
    opted = sum(int(_summary_row(summary, campaign)[5].replace(",", "")) for campaign in
                {t["campaign_id"] for t in before})
    assert opted >= sum(per_customer[customer] for customer in chosen)
    assert main(["replay", str(stream_file), "--optout", str(tmp_path / "missing.txt"), "--out-dir",
                 str(out_dir), "--no-progress"]) == 2
