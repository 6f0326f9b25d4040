"""`kerbside fleet` and `kerbside fleet watch ID`: the fleet page's data in a terminal.

A client of the collector's JSON API (/api/fleet, /api/fleet/node), so the
table here and the page show the same nodes with the same problems, computed
in one place (collector/fleet.py) by the collector that holds every node's
status. It reads the collector's address and the operator credential from the
[http] settings, so on the collector's host `-c /etc/kerbside/collector.toml`
is all it needs; elsewhere give --url (and the credential in
KERBSIDE_HTTP_USER / KERBSIDE_HTTP_PASSWORD).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kerbside.core.errors import ConfigError
from kerbside.core.options import ConfigOpt

app = typer.Typer(help="The fleet as the collector sees it: which nodes are offline, since when, buffering, "
                       "dropping, failing a sensor, missing data.", no_args_is_help=False)
UrlOpt = Annotated[str | None, typer.Option("--url", help="The collector's HTTP address, e.g. http://10.0.0.5:9108; "
                                            "default: http.host and http.port of the settings.", show_default=False)]


class CollectorUnreachable(ConfigError):
    """The collector's HTTP API did not answer, refused the operator credential, or does not know the node."""


class Api:
    def __init__(self, config: Any, url: str | None) -> None:
        from kerbside.core import options

        cfg = options.load(config)
        host = cfg.http.host if cfg.http.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        self.base = (url or f"http://{host}:{cfg.http.port}").rstrip("/")
        self.headers = {}
        if cfg.http.password:
            token = base64.b64encode(f"{cfg.http.user}:{cfg.http.password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        q = urllib.parse.urlencode({k: v for k, v in query.items() if v not in (None, False, "")})
        url = f"{self.base}{path}" + (f"?{q}" if q else "")
        req = urllib.request.Request(url, headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as e:
            if e.code == 401:
                raise CollectorUnreachable(f"{self.base} wants the operator credential: set http.user and http.password "
                                           "(KERBSIDE_HTTP_PASSWORD) as on the collector") from None
            try:
                why = json.loads(e.read()).get("error", "")
            except ValueError:
                why = ""
            raise CollectorUnreachable(f"{url}: HTTP {e.code} {why}".strip()) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CollectorUnreachable(f"cannot reach the collector at {self.base} ({reason}): is it running, and are "
                                       "http.host/http.port (or --url) its address?") from None


def _ago(t: float | None, now: float) -> str:
    if t is None:
        return "—"
    s = max(0, int(now - t))
    if s < 120:
        return f"{s} s ago"
    if s < 7200:
        return f"{s // 60} min ago"
    if s < 172800:
        return f"{s // 3600} h ago"
    return f"{s // 86400} d ago"


def _dash(v: Any, suffix: str = "") -> str:
    return "—" if v is None else f"{v}{suffix}"


def _state(n: dict[str, Any], now: float) -> str:
    colour = {"online": "green", "offline": "red"}.get(n["state"], "dim")
    since = f" {_ago(n['since'], now).replace(' ago', '')}" if n.get("since") else ""
    return f"[{colour}]{n['state']}[/]{since}"


WIDE = 150
"""From this console width the problems are a column of the table; below it they are listed under it."""
NARROW = 110
"""Below this width kit, zone, firmware and config are left out (a behind firmware or config is a problem, listed)."""


def table(doc: dict[str, Any], width: int = WIDE) -> Table:
    from rich import box

    now = doc["generated"]
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    flag = "[yellow]{}[/]"
    columns = {
        "node": lambda n: n["id"], "kit": lambda n: n["kit"], "site": lambda n: escape(n["site"]),
        "zone": lambda n: escape(n["zone"]), "state": lambda n: _state(n, now),
        "last reading": lambda n: _ago(n.get("last_reading"), now),
        "fw": lambda n: escape(_dash(n["fw"])) if n["fw_current"] else flag.format(escape(_dash(n["fw"]))),
        "cfg": lambda n: _dash(n["config"]) if n["config_current"] else flag.format(_dash(n["config"])),
        "RSSI": lambda n: _dash(n["rssi"]), "buf": lambda n: _dash(n["buffered"]), "drop": lambda n: _dash(n["dropped"]),
        "capture": lambda n: "—" if n.get("capture") is None else f"{n['capture']:.0%}",
        "gaps": lambda n: _dash(n.get("gaps_open")),
        "problems": lambda n: escape("; ".join(p["text"] for p in n["problems"])),
    }
    if width < WIDE:
        del columns["problems"]
    if width < NARROW:
        for name in ("kit", "zone", "fw", "cfg"):
            del columns[name]
    for name in columns:
        right = name in ("cfg", "RSSI", "buf", "drop", "capture", "gaps")
        t.add_column(name, justify="right" if right else "left", no_wrap=name not in ("site", "problems"),
                     overflow="fold")
    for n in doc["nodes"]:
        t.add_row(*(cell(n) for cell in columns.values()))
    return t


@app.callback(invoke_without_command=True)
def fleet_cmd(
    ctx: typer.Context,
    offline: Annotated[bool, typer.Option("--offline", help="Only nodes not online (offline or never seen).")] = False,
    zone: Annotated[str | None, typer.Option("--zone", help="Only nodes in this zone.", show_default=False)] = None,
    problems: Annotated[bool, typer.Option("--problems", help="Only nodes with a problem.")] = False,
    sort: Annotated[str, typer.Option("--sort", help="Sort by: id, site, zone, kit, state, since, last_reading, fw, "
                                      "config, rssi, buffered, dropped, capture, gaps_open, problems.")] = "problems",
    desc: Annotated[bool, typer.Option("--desc", help="Reverse the order.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The collector's JSON (/api/fleet) instead of a table.")] = False,
    url: UrlOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Every registered node: online or not and since when, last reading, firmware and config version (flagged
    when behind the fleet), RSSI, buffered and dropped readings, data capture over 24 h, open gaps, problems.

    Reads the running collector's fleet API (http.host, http.port; the operator credential http.user and
    http.password when it has one). Exit status 1 if the collector cannot be asked.

    Examples:

      kerbside fleet -c /etc/kerbside/collector.toml --problems

      kerbside fleet --offline --zone lez --sort since

      kerbside fleet --json | jq '.nodes[] | select(.state != "online") | .id'
    """
    if ctx.invoked_subcommand is not None:
        return
    doc = Api(config, url).get("/api/fleet", offline=int(offline) or None, zone=zone, problems=int(problems) or None,
                               sort=sort, desc=int(desc) or None)
    if as_json:
        typer.echo(json.dumps(doc, indent=1))
        return
    console = Console(soft_wrap=True)
    console.print(table(doc, console.width), soft_wrap=False)
    if console.width < WIDE:
        for n in doc["nodes"]:
            for p in n["problems"]:
                console.print(f"{n['id']} {escape(n['site'])}: {escape(p['text'])}")
    s = doc["summary"]
    shown = f"{len(doc['nodes'])} shown of " if len(doc["nodes"]) != s["nodes"] else ""
    console.print(f"{shown}{s['nodes']} nodes: {s['online']} online, {s['offline']} offline, {s['unseen']} never seen; "
                  f"{s['problems']} with problems." + ("" if doc["influx"]["ok"] else
                                                       f" [red]InfluxDB did not answer[/]: {escape(doc['influx']['error'])}"))


def _reading_line(kit: str, r: dict[str, Any]) -> str:
    when = dt.datetime.fromtimestamp(r["time"]).strftime("%H:%M:%S")
    if kit == "traffic":
        vals = f"vehicles in {_dash(r.get('vehicles'))}, speed {_dash(r.get('speed'), ' km/h')}"
    else:
        vals = (f"PM2.5 {_dash(r.get('pm25'), ' µg/m³')}, NO2 {_dash(r.get('no2'), ' µg/m³')}, "
                f"temp {_dash(r.get('temp'), ' °C')}")
    cap = r.get("capture")
    return f"reading {when}  seq {r.get('seq')}  {vals}  capture {'—' if cap is None else f'{cap:.0%}'}"


def _status_line(n: dict[str, Any]) -> str:
    if n["state"] == "unseen":
        return "not seen yet: waiting for its first status (power, Wi-Fi, broker login)"
    parts = [n["state"], f"fw {_dash(n['fw'])}", f"config {_dash(n['config'])}", f"RSSI {_dash(n['rssi'], ' dBm')}",
             f"buffered {_dash(n['buffered'])}", f"dropped {_dash(n['dropped'])}",
             "clock synced" if n["synced"] else "clock NOT synced"]
    if n["health"]:
        parts.append("health " + " ".join(f"{k}={v}" for k, v in n["health"].items()))
    return ", ".join(parts)


@app.command("watch")
def watch_cmd(
    device: Annotated[str, typer.Argument(help="The node's 8-hex id (on its label).")],
    every: Annotated[float, typer.Option("--every", help="Seconds between looks.")] = 2.0,
    until_reading: Annotated[bool, typer.Option("--until-reading", help="Stop (exit 0) once the node is online "
                                                "and a new reading of it arrived while watching.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Give up after this many seconds (exit 1); 0: never.")] = 0,
    url: UrlOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Follow one node live: its status as it changes and its readings as they arrive (Ctrl-C stops).

    What a technician runs on the lamp post right after install: it says when the node comes online, shows
    its signal, clock and buffer, each new reading, and its problems.

    Example:  kerbside fleet watch 00c0ffee --until-reading --timeout 600
    """
    api = Api(config, url)
    deadline = time.monotonic() + timeout if timeout else None
    after = time.time() - 3600
    last_status = last_problems = None
    got_reading = False
    first = True
    console = Console(highlight=False, soft_wrap=True)
    console.print(f"watching {device} through {api.base} (Ctrl-C stops)")
    try:
        while True:
            doc = api.get("/api/fleet/node", id=device, after=f"{after:.3f}")
            n = doc["node"]
            line = _status_line(n)
            if line != last_status:
                console.print(f"{time.strftime('%H:%M:%S')}  status  {escape(line)}")
                last_status = line
            problems = "; ".join(p["text"] for p in n["problems"])
            if problems != last_problems:
                console.print(f"{time.strftime('%H:%M:%S')}  problems  {escape(problems) or 'none'}")
                last_problems = problems
            for r in doc.get("recent") or []:
                console.print(f"{time.strftime('%H:%M:%S')}  {escape(_reading_line(n['kit'], r))}")
                after = max(after, float(r["time"]))
                got_reading = got_reading or not first  # the first look shows the last hour: not an arrival
            first = False
            if not doc["influx"]["ok"]:
                console.print(f"[red]InfluxDB did not answer[/]: {escape(doc['influx']['error'])}")
            if until_reading and got_reading and n["state"] == "online":
                console.print(f"[green]{device} is online and its readings arrive.[/]")
                return
            if deadline is not None and time.monotonic() >= deadline:
                console.print(f"[red]gave up after {timeout:g} s[/]")
                raise typer.Exit(1)
            time.sleep(every)
    except KeyboardInterrupt:
        return


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="fleet")
