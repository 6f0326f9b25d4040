"""The fleet page in a real browser, against the real collector, Mosquitto, InfluxDB and a simulated fleet.

Four nodes run the real firmware on the simulator's virtual clock: three air, one traffic; one has a
broken PM sensor and one loses Wi-Fi two and a half hours into a four-hour run. At 3.5 h simulated time
stands still (a controller that does not park holds the clock: simulator/clock.py) while the test looks:
every reading taken so far is in InfluxDB, the offline node's last will has fired, and nothing moves
under the page. Debian's headless Chromium loads /fleet with the operator credential; the table, the map
and the heatmap are checked against the simulator and InfluxDB, and `kerbside fleet` against the same
stack. Then time moves ten simulated minutes and holds again while `kerbside fleet watch` sees a node's
new readings arrive.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kerbside.cli import app
from kerbside.core.influx import InfluxClient
from kerbside.core.registry import Registry
from kerbside.devstack import CollectorProcess, Mosquitto, free_port, headless_chromium, wait_for
from kerbside.simulator.fleet import FaultPlan, Fleet, FleetConfig
from knode.node import FW

pytestmark = pytest.mark.services
ROOT = Path(__file__).resolve().parents[2]
ARTEFACTS = ROOT / "build" / "test-artefacts"
HOUR = 3600
PASSWORD = "correct horse battery staple"
BROKEN, OFFLINE, WATCHED = 2, 3, 1
"""Node indices with seed 1: the broken sensor falls on air node 2 (asserted); node 3 goes offline; node 1 is watched."""


def _hold(fleet: Fleet, at: float, work: Callable[[], None]) -> Callable[[], object]:
    """A task that stops simulated time at `at` until work() (run on a thread) returns. It never parks, so the
    clock cannot move on (sleep_until(last=True) wakes it after everything else due then); the event loop
    still serves the nodes' sockets, so what they sent arrives meanwhile."""
    async def hold() -> None:
        await fleet.clock.sleep_until(at, last=True)
        done = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                work()
            except BaseException as e:
                failure.append(e)
            finally:
                done.set()

        threading.Thread(target=run, name="checks", daemon=True).start()
        while not done.is_set():
            await asyncio.sleep(0)
            time.sleep(0.001)  # the loop turns ~1000 times a second, without spinning a core
        if failure:
            raise failure[0]
    return hold


class Stack:
    def __init__(self, tmp_path: Path, influxd, db: str) -> None:  # type: ignore[no-untyped-def]
        self.tmp = tmp_path
        self.broker = Mosquitto("mosquitto", tmp_path / "mosquitto", free_port()).start()
        self.registry = tmp_path / "registry.json"
        self.influx = InfluxClient(influxd.url, db)
        self.db = db
        self.influxd = influxd
        self.collector: CollectorProcess | None = None

    def start_collector(self) -> None:
        self.collector = CollectorProcess("collector", self.tmp, 0, settings={
            "mqtt": {"url": self.broker.url, "client_id": "fleet-page"},
            "influx": {"url": self.influxd.url, "db": self.db},
            "spool": {"dir": self.tmp / "spool"}, "registry": {"path": self.registry},
            "http": {"password": PASSWORD}}).start()

    @property
    def base(self) -> str:
        assert self.collector is not None
        return f"http://127.0.0.1:{self.collector.port}"

    def get(self, path: str) -> dict:
        auth = "Basic " + base64.b64encode(f"operator:{PASSWORD}".encode()).decode()
        with urllib.request.urlopen(urllib.request.Request(self.base + path, headers={"Authorization": auth}),
                                    timeout=30) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.collector is not None:
            self.collector.stop()
        self.broker.stop()
        self.influx.query(f'DROP DATABASE "{self.db}"', post=True)
        self.influx.close()

    def counts(self) -> dict[str, int]:
        """Readings stored per device (one air point, or one inbound traffic_flow point, per reading)."""
        out: dict[str, int] = {}
        for q in ('SELECT count(seq) FROM air GROUP BY device',
                  "SELECT count(seq) FROM traffic_flow WHERE direction = 'in' GROUP BY device"):
            try:
                for s in self.influx.query(q):
                    out[s["tags"]["device"]] = int(s["values"][0][1])
            except Exception:
                pass  # the database is created by the collector at start
        return out

    def per_hour(self, start: int, end: int) -> dict[tuple[str, int], tuple[int, float]]:
        """(device, hour start) -> (readings, summed capture), binned here from the raw points."""
        out: dict[tuple[str, int], tuple[int, float]] = {}
        for q in (f"SELECT seq, capture FROM air WHERE time >= {start}s AND time < {end}s GROUP BY device",
                  f"SELECT seq, capture FROM traffic_flow WHERE direction = 'in' AND time >= {start}s AND time < {end}s "
                  "GROUP BY device"):
            for s in self.influx.query(q, epoch="s"):
                for t, _seq, cap in s["values"]:
                    key = (s["tags"]["device"], start + (t - start) // HOUR * HOUR)
                    n, c = out.get(key, (0, 0.0))
                    out[key] = (n + 1, c + cap)
        return out


@pytest.fixture
def stack(tmp_path: Path, influxd, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    s = Stack(tmp_path, influxd, "t_fleet_page")
    yield s
    s.stop()


def test_the_fleet_page_in_chromium_shows_what_is_wrong_and_what_influx_holds(stack: Stack, tmp_path: Path) -> None:
    start = float(int(time.time()) // 60 * 60 - 4 * HOUR)
    cfg = FleetConfig(broker=stack.broker.url, air=3, traffic=1, seed=1, start=start, duration=4 * HOUR, speedup=2000,
                      period=60, sample=60, state_dir=tmp_path / "flash", drain_timeout=30,
                      faults=FaultPlan(broken_sensor_nodes=1, offline={OFFLINE: [(2.5 * HOUR, 1.5 * HOUR)]}))
    fleet = Fleet(cfg)
    nodes = {vn.stats.index: vn for vn in fleet.nodes}
    assert nodes[BROKEN].board.faults.broken_sensor and nodes[BROKEN].stats.kit == "air"
    ids = {i: vn.stats.device for i, vn in nodes.items()}
    fleet.write_registry(stack.registry)
    with Registry(stack.registry).edit() as devices:  # installed when the run starts: judged on their hours since
        for d in devices.values():
            d.created = dt.datetime.fromtimestamp(start, dt.UTC).isoformat()
    stack.start_collector()
    runner = CliRunner()
    watch: dict[str, subprocess.Popen[str]] = {}
    watch_out: list[str] = []

    def produced(i: int) -> int:
        vn = nodes[i]
        return vn.stats.produced + (vn.node.produced if vn.node is not None else 0)

    def first_look() -> None:
        # Everything the online nodes took is stored; the offline one is known offline.
        def settled() -> bool:
            counts = stack.counts()
            online = all(counts.get(ids[i], -1) == produced(i) and nodes[i].node is not None
                         and len(nodes[i].node.store) == 0 for i in ids if i != OFFLINE)
            m = stack.collector.metrics() or {}  # type: ignore[union-attr]
            return online and m.get("kerbside_unacked_messages") == 0 and m.get("kerbside_nodes_offline") == 1
        wait_for(settled, "the online nodes' readings stored and the offline node's last will", 60)
        doc = stack.get("/api/fleet")
        rows = {n["id"]: n for n in doc["nodes"]}
        assert set(rows) == set(ids.values())
        assert rows[ids[OFFLINE]]["state"] == "offline" and rows[ids[OFFLINE]]["since"] is not None
        assert {n["state"] for i, n in ((i, rows[ids[i]]) for i in ids) if i != OFFLINE} == {"online"}
        broken = [p["text"] for p in rows[ids[BROKEN]]["problems"]]
        assert any(t.startswith("PM sensor: no PM2.5 in ") for t in broken), broken

        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(stack.base + "/fleet", timeout=10)
        assert e.value.code == 401, "the operator credential guards the page"
        check_page()
        check_cli()
        start_watch()

    def check_page() -> None:
        driver = headless_chromium(tmp_path / "chromium")
        try:
            auth = base64.b64encode(f"operator:{PASSWORD}".encode()).decode()
            driver.execute_cdp_cmd("Network.enable", {})
            driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {auth}"}})
            driver.get(stack.base + "/fleet")
            wait_for(lambda: driver.execute_script("return document.body.dataset.ready") == "1", "the page drawn", 30)
            page = driver.execute_script("""
                const q = (s) => [...document.querySelectorAll(s)];
                return {
                  rows: q('#nodes tbody tr').map((r) => ({id: r.dataset.id, state: r.dataset.state, text: r.innerText})),
                  dots: q('#map circle').map((c) => ({id: c.dataset.id, cls: c.getAttribute('class')})),
                  cells: q('#heatmap rect.cell').map((c) => [c.dataset.id, Number(c.dataset.hour), Number(c.dataset.n),
                                                           c.dataset.capture]),
                  window: window.kerbsideFleet.window,
                  summary: document.getElementById('summary').innerText};""")
            w0, w1 = page["window"]  # the hours the page shows (the wall clock may pass an hour meanwhile)
            truth = stack.per_hour(w0, w1)
            assert page["summary"].startswith("4 nodes: 3 online, 1 offline, 0 never seen")
            rows = {r["id"]: r for r in page["rows"]}
            assert set(rows) == set(ids.values()) and len(page["rows"]) == 4
            assert rows[ids[OFFLINE]]["state"] == "offline" and "offline" in rows[ids[OFFLINE]]["text"]
            assert "PM sensor: no PM2.5 in" in rows[ids[BROKEN]]["text"]
            dots = {d["id"]: d["cls"] for d in page["dots"]}
            assert set(dots) == set(ids.values()) and len(page["dots"]) == 4, "the map has every node"
            assert dots[ids[OFFLINE]] == "offline" and dots[ids[BROKEN]] == "problem"
            hours = list(range(w0, w1, HOUR))
            assert sorted((c[0], c[1]) for c in page["cells"]) == sorted((d, h) for d in ids.values() for h in hours)
            for dev, hour, n, capture in page["cells"]:
                want_n, want_cap = truth.get((dev, hour), (0, 0.0))
                assert n == want_n, f"{dev} at {hour}: the cell says {n} readings, InfluxDB holds {want_n}"
                assert float(capture) == pytest.approx(min(1.0, want_cap / 60), abs=1e-4)
            assert sum(n for _, _, n, _ in page["cells"]) > 4 * 60, "the cells are not all empty"
            # the broken node's detail: no PM line, an NO2 line
            driver.find_element("css selector", f'#nodes tr[data-id="{ids[BROKEN]}"]').click()
            wait_for(lambda: driver.execute_script(
                f"return document.getElementById('detail').dataset.id === '{ids[BROKEN]}' && "
                "document.querySelectorAll('#sparks svg').length === 4"), "the node's detail", 30)
            lines = driver.execute_script("""return Object.fromEntries([...document.querySelectorAll('#sparks svg')]
                .map((s) => [s.dataset.channel, s.querySelectorAll('polyline, rect').length]));""")
            assert lines["pm25"] == 0 and lines["no2"] >= 1 and lines["capture"] > 0, lines
            ARTEFACTS.mkdir(parents=True, exist_ok=True)
            assert driver.save_screenshot(str(ARTEFACTS / "fleet-page.png"))
        finally:
            driver.quit()

    def check_cli() -> None:
        env = {"KERBSIDE_HTTP_PASSWORD": PASSWORD, "COLUMNS": "200"}
        r = runner.invoke(app, ["fleet", "--url", stack.base, "--json"], env=env)
        assert r.exit_code == 0, r.output
        doc = json.loads(r.output)
        assert {n["id"]: n["state"] for n in doc["nodes"]} == {
            d: "offline" if i == OFFLINE else "online" for i, d in ids.items()}
        r = runner.invoke(app, ["fleet", "--url", stack.base], env=env)
        assert r.exit_code == 0, r.output
        line = next(x for x in r.output.splitlines() if x.strip().startswith(ids[BROKEN]))
        assert "PM sensor: no PM2.5 in" in line
        assert "4 nodes: 3 online, 1 offline, 0 never seen" in r.output
        r = runner.invoke(app, ["fleet", "--url", stack.base, "--offline"], env=env)
        assert [x.split()[0] for x in r.output.splitlines() if x.strip()[:8] in ids.values()] == [ids[OFFLINE]]
        assert "1 shown of 4 nodes" in r.output
        r = runner.invoke(app, ["fleet", "--url", stack.base], env={"COLUMNS": "200"})
        assert r.exit_code == 2 and "wants the operator credential" in r.output

    def start_watch() -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KERBSIDE_")}
        env.update({"KERBSIDE_CONFIG": "", "KERBSIDE_HTTP_PASSWORD": PASSWORD})
        proc = subprocess.Popen([sys.executable, "-m", "kerbside", "fleet", "watch", ids[WATCHED], "--url", stack.base,
                                 "--every", "0.2", "--until-reading", "--timeout", "120"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        watch["proc"] = proc
        assert proc.stdout is not None
        while True:  # the first look: status, problems, the last hour's readings
            line = proc.stdout.readline()
            assert line, "".join(watch_out)
            watch_out.append(line)
            if "  problems  " in line:
                break
        threading.Thread(target=lambda: watch_out.extend(proc.stdout), daemon=True).start()  # type: ignore[arg-type]

    def second_look() -> None:
        proc = watch["proc"]
        assert proc.wait(60) == 0, "".join(watch_out)

    async def scenario() -> None:
        run = asyncio.create_task(fleet.run())
        await asyncio.sleep(0)
        at = fleet.start + 3.5 * HOUR
        await _hold(fleet, at, first_look)()
        await _hold(fleet, at + 600, second_look)()
        await run

    try:
        asyncio.run(scenario())
    finally:
        if "proc" in watch and watch["proc"].poll() is None:
            watch["proc"].kill()
    text = "".join(watch_out)
    assert f"  status  online, fw {FW}, config 1" in text
    seqs = [int(x.split(" seq ")[1].split()[0]) for x in text.splitlines() if "  reading " in x]
    # the first look shows the newest 20 of the last hour, then each new reading once, in order
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and len(seqs) > 20, text
    assert f"{ids[WATCHED]} is online and its readings arrive." in text
