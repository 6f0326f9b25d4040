"""Pure-logic pieces of the collector: config layering, the spool file format, sequence tracking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kerbside.cli import app
from kerbside.collector.gaps import SeqTracker
from kerbside.collector.spool import Batch, Spool, SpoolFull
from kerbside.core.settings import ConfigError, load


def test_config_file_env_and_flags_layer(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[influx]\ndb = "fromfile"\nunsynced_rp = "unsynced"\n[batch]\nlines = 100\n')
    cfg = load(f, env={"KERBSIDE_BATCH_LINES": "2000", "KERBSIDE_INFLUX_GZIP": "false", "KERBSIDE_HOME": "/x"},
               overrides={"influx.db": "fromflag", "mqtt.url": None})
    assert (cfg.influx.db, cfg.influx.unsynced_rp, cfg.batch.lines, cfg.influx.gzip) == ("fromflag", "unsynced", 2000, False)
    assert cfg.mqtt.url == "mqtt://127.0.0.1:1883"


@pytest.mark.parametrize(("text", "env", "message"), [
    ("[influx]\nbdb = 1\n", {}, "unknown key 'bdb'"),
    ("[nope]\nx = 1\n", {}, "unknown section [nope]"),
    ("[batch]\nlines = \"many\"\n", {}, "expected an integer"),
    ("", {"KERBSIDE_BATCH_LINES": "lots"}, "KERBSIDE_BATCH_LINES"),
    ("", {"KERBSIDE_MQTT_URL": "tcp://x"}, "mqtt://"),
    ("[influx\n", {}, "not valid TOML"),
])
def test_config_errors_say_where(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load(f, env=env)


def test_print_config_masks_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERBSIDE_MQTT_PASSWORD", "hunter2")
    monkeypatch.setenv("KERBSIDE_INFLUX_TOKEN", "tok")
    r = CliRunner().invoke(app, ["collect", "--print-config", "--db", "city", "--spool", str(tmp_path)])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["mqtt"]["password"] == "***" and doc["influx"]["token"] == "***"
    assert doc["influx"]["db"] == "city" and doc["spool"]["dir"] == str(tmp_path)
    assert "hunter2" not in r.output


def test_example_config_loads() -> None:
    cfg = load(Path(__file__).resolve().parents[2] / "collector" / "deploy" / "collector.toml", env={})
    assert cfg.influx.unsynced_rp == "unsynced"


def test_spool_replays_in_order_and_survives_reopen(tmp_path: Path) -> None:
    s = Spool(tmp_path, 1 << 20)
    for i in range(5):
        s.append(Batch("" if i % 2 else "unsynced", [f"m v={i}i {i}"]))
    b = s.peek()
    assert b == Batch("unsynced", ["m v=0i 0"])
    s.pop()
    s.close()
    s = Spool(tmp_path, 1 << 20)  # a restart
    got = []
    while (b := s.peek()) is not None:
        got.append(b.lines[0])
        s.pop()
    assert got == [f"m v={i}i {i}" for i in range(1, 5)]
    assert (len(s), s.bytes) == (0, 0)
    assert not list(tmp_path.glob("*.seg"))


def test_spool_cuts_torn_tail_and_refuses_to_overflow(tmp_path: Path) -> None:
    s = Spool(tmp_path, 1 << 20)
    s.append(Batch("", ["a v=1i 1"]))
    s.close()
    seg = next(tmp_path.glob("*.seg"))
    with open(seg, "ab") as f:
        f.write(b"KSP1\x40\x00\x00\x00partial")  # crash in the middle of an append
    s = Spool(tmp_path, 1 << 20)
    assert len(s) == 1 and s.peek() == Batch("", ["a v=1i 1"])
    big = Batch("", ["x" * 1000] * 1100)
    with pytest.raises(SpoolFull):
        s.append(big)
    assert len(s) == 1


def test_seq_tracker_gap_lifecycle_and_reset(tmp_path: Path) -> None:
    t = SeqTracker(tmp_path / "s.json")
    assert t.observe("d", 0, 5, 1000, 60, {}) == []
    [line] = t.observe("d", 8, 2, 1000 + 8 * 60, 60, {"site": "a b"})
    assert line == f"kerbside_gaps,device=d,site=a\\ b first_seq=5i,last_seq=7i,missing=3i,period=60i {(1000 + 5 * 60) * 10**9}"
    assert t.observe("d", 6, 1, 1000 + 6 * 60, 60, {}) == [
        f"kerbside_gaps,device=d first_seq=5i,last_seq=7i,missing=2i,period=60i {(1000 + 5 * 60) * 10**9}"]
    assert t.observe("d", 6, 1, 1000 + 6 * 60, 60, {}) == []
    assert t.duplicates == 1
    t.save()
    t2 = SeqTracker(tmp_path / "s.json")
    assert t2.missing() == 2
    assert t2.observe("d", 5_000_000, 1, 5000, 60, {}) == []  # a reflashed node: not four million missing readings
    assert t2.resets == 1 and t2.open_gaps() == 0


def test_spool_warns_loudly_once_near_full(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = Spool(tmp_path, 1 << 20, warn_ratio=0.5)
    line = "x" * 1000
    with caplog.at_level("ERROR", logger="kerbside.collector.spool"):
        for _ in range(700):
            s.append(Batch("", [line]))
    assert s.fill > 0.6
    assert [r.getMessage()[:17] for r in caplog.records] == ["SPOOL NEARLY FULL"]


def test_seq_state_is_journaled_per_batch_and_compacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Saving costs what a batch changed, not the whole fleet; a torn last entry (crash mid-append) is ignored."""
    import kerbside.collector.gaps as gaps

    monkeypatch.setattr(gaps, "COMPACT_EVERY", 4)
    t = SeqTracker(tmp_path / "s.json")
    for d in range(1000):
        t.observe(f"{d:08x}", 0, 1, 1000, 60, {})
    t.write(t.snapshot())  # cut 1: all 1000 devices changed
    t.observe("00000001", 5, 1, 1300, 60, {})  # opens gap 1..4
    delta = t.snapshot()  # cut 2: one device
    assert len(delta) < 300 and '"00000001"' in delta
    t.write(delta)
    t.observe("00000001", 1, 2, 1060, 60, {})  # fills 1..2
    t.write(t.snapshot())  # cut 3
    reloaded = SeqTracker(tmp_path / "s.json")
    assert reloaded.devices == t.devices and len(reloaded.devices) == 1000
    assert reloaded.devices["00000001"].gaps[0].holes == [[3, 4]]

    with open(tmp_path / "s.journal", "a") as f:
        f.write('{"cut":4,"full":false,"devices":{"00000001":{"hi":9')  # torn
    t = SeqTracker(tmp_path / "s.json")  # the torn entry is ignored (opening writes nothing)...
    t.observe("00000003", 1, 1, 1060, 60, {})
    t.write(t.snapshot())  # ...and cut off by the next append; the next cut continues from the reloaded one
    assert '"hi":9' not in (tmp_path / "s.journal").read_text()
    assert SeqTracker(tmp_path / "s.json").devices == t.devices

    t.observe("00000002", 1, 1, 1060, 60, {})
    t.write(t.snapshot())  # a later cut: fine either way
    assert SeqTracker(tmp_path / "s.json").devices == t.devices
    for _ in range(4):
        t.observe("00000002", 2, 1, 1120, 60, {})
        t.write(t.snapshot())
    assert (tmp_path / "s.journal").read_text().count("\n") < 4, "a full rewrite empties the journal"
    assert SeqTracker(tmp_path / "s.json").devices == t.devices
