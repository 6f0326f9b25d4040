"""Fleet page benchmark (not a test): how long the page takes to load with 1 000 nodes, in headless Chromium.

Running 1 000 firmware nodes is not needed to fill what the page reads, so this
generates it: a registry of N nodes around the simulated city, 24 hours of
one-minute readings per node written to InfluxDB (1.44 million points for
1 000 nodes), a few open gaps, and a retained status per node published to
Mosquitto, which the real collector (a subprocess) takes on subscribe. Some
nodes are offline, dropping, buffering or short of data, so the page draws
every kind of row. Then it times /api/fleet alone and the whole page in Debian's
headless Chromium (navigation start until the table, map and heatmap are drawn),
several times, and prints the medians.

  .venv/bin/python bench/fleet_page.py                # 1 000 nodes
  .venv/bin/python bench/fleet_page.py --nodes 200 --runs 3 --screenshot /tmp/fleet.png
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kerbside.core.influx import InfluxClient  # noqa: E402
from kerbside.core.registry import Device, Registry  # noqa: E402
from kerbside.devstack import CollectorProcess, Influxd, Mosquitto, free_port, headless_chromium, wait_for  # noqa: E402
from kerbside.simulator.city import CITY_BBOX, inside  # noqa: E402
from knode import wire  # noqa: E402

PERIOD = 60
FW = "0.1.0"


def nodes(n: int, seed: int = 3) -> list[Device]:
    rng = random.Random(seed)
    lon0, lat0, lon1, lat1 = CITY_BBOX
    out = []
    for i in range(n):
        lon, lat = round(rng.uniform(lon0, lon1), 5), round(rng.uniform(lat0, lat1), 5)
        out.append(Device(f"{0xF2000000 + i:08x}", "traffic" if i % 5 == 4 else "air", f"bench-{i:04d}",
                          "lez" if inside(lon, lat) else "outside", lat, lon))
    return out


def fate(i: int) -> str:
    """What happens to node i: most are fine, a few of each problem."""
    return {0: "offline", 1: "dropping", 2: "backlog", 3: "broken_pm", 4: "late"}.get(i % 50, "ok")


def lines(devs: list[Device], end: int, hours: int = 24) -> list[str]:
    rng = random.Random(5)
    start = end - hours * 3600
    out = []
    for i, d in enumerate(devs):
        tags = f"device={d.id},kit={d.kit},site={d.site},zone={d.zone}"
        stop = end - 5 * 3600 if fate(i) == "offline" else end
        for k, t in enumerate(range(start, stop, PERIOD)):
            if fate(i) == "late" and (t - start) // 3600 in (3, 4, 5):
                continue  # three hours lost: a gap
            ns = t * 1_000_000_000
            if d.kit == "air":
                pm = "" if fate(i) == "broken_pm" else f"pm1={rng.uniform(3, 9):.1f},pm10={rng.uniform(12, 30):.1f}," \
                                                       f"pm25={rng.uniform(6, 18):.1f},"
                out.append(f"air,{tags} boot=1i,capture=1,no2={rng.uniform(15, 60):.1f},{pm}rh=55.0,samples=6i,"
                           f"seq={k}i,temp={rng.uniform(5, 15):.1f} {ns}")
            else:
                for direction in ("in", "out"):
                    out.append(f"traffic_flow,{tags},direction={direction} boot=1i,capture=1,interval=60i,samples=60i,"
                               f"seq={k}i,speed={rng.uniform(20, 45):.1f},vehicles={rng.randint(0, 30)}i {ns}")
        if fate(i) == "late":
            first = 3 * 60
            out.append(f"kerbside_gaps,{tags} first_seq={first}i,last_seq={first + 179}i,missing=180i,period=60i "
                       f"{(start + 3 * 3600) * 1_000_000_000}")
    return out


def statuses(devs: list[Device], now: int) -> list[tuple[str, bytes]]:
    out = []
    for i, d in enumerate(devs):
        f = fate(i)
        health = {"pm_err": 0, "th_err": 0, "laser_h": 1200} if d.kit == "air" else {"det_err": 0, "vehicles": 5000}
        st = {"v": 1, "id": bytes.fromhex(d.id), "online": f != "offline", "t": now - 30, "synced": True, "fw": FW,
              "kit": 1 if d.kit == "air" else 2, "up": 86400, "heap": 61000, "rssi": -55 - i % 30,
              "buf": 240 if f == "backlog" else 0, "drop": 37 if f == "dropping" else 0, "boot": 1, "seq": 1440,
              "cfg": 1, "health": health}
        out.append((wire.topic(d.id, "status"), wire.encode_status(st)))
    return out


def publish(port: int, msgs: list[tuple[str, bytes]]) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fleet-page-bench")
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    infos = [c.publish(t, p, qos=1, retain=True) for t, p in msgs]
    for info in infos:
        info.wait_for_publish(60)
    c.loop_stop()
    c.disconnect()


def page_load_s(driver, url: str, timeout: float = 120) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Navigate and wait until the page has drawn the fleet; times from the browser's own clock."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    t = driver.execute_script("return window.kerbsideFleet")
    return {"ready_s": t["ready_ms"] / 1000, "fetch_s": t["fetch_ms"] / 1000, "render_s": t["render_ms"] / 1000,
            "nodes": t["nodes"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--screenshot", type=Path)
    ap.add_argument("--serve", type=float, default=0, help="keep the stack up this many seconds after (to look around)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="kerbside-fleet-page-") as tmp:
        root = Path(tmp)
        influxd = Influxd("influxd", root / "influxd", free_port()).start()
        broker = Mosquitto("mosquitto", root / "mosquitto", free_port()).start()
        col = None
        try:
            devs = nodes(args.nodes)
            registry = root / "registry.json"
            with Registry(registry).edit() as devices:
                devices.update({d.id: d for d in devs})
            now = int(time.time())
            end = now // 3600 * 3600
            t = time.monotonic()
            data = lines(devs, now)
            with InfluxClient(influxd.url, "kerbside", gzip=True, timeout=120) as client:
                client.create_database()
                for i in range(0, len(data), 50_000):
                    client.write(data[i:i + 50_000])
            print(f"{args.nodes} nodes: wrote {len(data):,} points in {time.monotonic() - t:.1f} s "
                  f"(24 h to {time.strftime('%H:%M', time.localtime(now))}; the page's window ends {end})")
            publish(broker.port, statuses(devs, now))
            col = CollectorProcess("collector", root, 0, settings={
                "mqtt": {"url": broker.url, "client_id": "fleet-page-bench"},
                "influx": {"url": influxd.url, "db": "kerbside"},
                "spool": {"dir": root / "spool"}, "registry": {"path": registry}}).start()
            base = f"http://127.0.0.1:{col.port}"
            wait_for(lambda: json.load(urllib.request.urlopen(f"{base}/healthz", timeout=5))["fleet"]["unseen"] == 0,
                     "every node's status at the collector", 60)
            api = []
            for _ in range(args.runs):
                t = time.monotonic()
                with urllib.request.urlopen(f"{base}/api/fleet", timeout=60) as r:
                    doc = json.loads(r.read())
                api.append(time.monotonic() - t)
            print(f"/api/fleet: median {statistics.median(api):.2f} s over {args.runs} (InfluxDB queries "
                  f"{doc['influx']['query_s']:.2f} s, {len(json.dumps(doc)) / 1e6:.1f} MB of JSON, "
                  f"{doc['summary']['problems']} nodes with problems)")
            driver = headless_chromium(root / "chromium")
            try:
                runs = [page_load_s(driver, f"{base}/fleet") for _ in range(args.runs)]
                if args.screenshot:
                    driver.save_screenshot(str(args.screenshot))
            finally:
                driver.quit()
            ready = statistics.median(r["ready_s"] for r in runs)
            print(f"page in headless Chromium, {runs[0]['nodes']} nodes: ready (table, map, heatmap drawn) after "
                  f"median {ready:.2f} s (fetch {statistics.median(r['fetch_s'] for r in runs):.2f} s, render "
                  f"{statistics.median(r['render_s'] for r in runs):.2f} s), runs: "
                  + ", ".join(f"{r['ready_s']:.2f}" for r in runs))
            if args.serve:
                print(f"serving {base}/fleet for {args.serve:g} s", flush=True)
                time.sleep(args.serve)
        finally:
            if col is not None:
                col.stop()
            broker.stop()
            influxd.stop()


if __name__ == "__main__":
    main()
