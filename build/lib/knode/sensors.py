# kerbside node firmware - the sensor set of each kit.
#
# A kit object is what the core's sampler sees: sample() once per sample slot
# (async: the PM laser warm-up waits), take() at the end of an interval
# giving (samples, values) in wire.py's channel order, health() for status.
# Pin numbers come from config "pins" (defaults: hardware/air-kit.md and
# hardware/traffic-kit.md).
from knode import aggregate, wire
from knode.drivers import detector, no2, pms, sds011, sensirion

AIR_PINS = {"pm": "pms5003", "pm_uart": 1, "pm_tx": 17, "pm_rx": 16, "scl": 22, "sda": 21,
            "no2_we": 34, "no2_ae": 35, "co2": 1, "no2": 1}
TRAFFIC_PINS = {"det_uart": 2, "det_tx": 25, "det_rx": 26}


def _pins(cfg, defaults):
    p = dict(defaults)
    p.update(cfg.get("pins") or {})
    return p


class AirKit:
    nch = len(wire.AIR_CHANNELS)

    def __init__(self, board, cfg):
        p = _pins(cfg, AIR_PINS)
        self.board = board
        self.cal = cfg.get("cal") or {}
        self.sample_s = cfg["sample"]
        self.uart = board.uart(p["pm_uart"], 9600, p["pm_tx"], p["pm_rx"], 512)
        self.pm = sds011.Parser() if p["pm"] == "sds011" else pms.Parser()
        self.pms = p["pm"] != "sds011"
        i2c = board.i2c(p["scl"], p["sda"])
        self.sht = sensirion.SHT3x(i2c)
        self.scd = sensirion.SCD4x(i2c) if p["co2"] else None
        self.no2 = None
        if p["no2"]:
            self.no2 = no2.NO2(board.adc(p["no2_we"]), board.adc(p["no2_ae"]), self.cal)
        if self.scd is not None:
            try:
                self.scd.start()
            except OSError:
                self.scd.errors += 1
        # Duty-cycle the laser only when there is time to warm up between samples.
        self.duty = self.pms and self.sample_s >= 2 * pms.WARMUP_S
        self.laser_s = 0
        self.agg = aggregate.Mean(self.nch)
        self.vals = [None] * self.nch
        if self.duty:
            self.uart.write(pms.CMD_SLEEP)

    async def sample(self):
        v = self.vals
        for i in range(self.nch):
            v[i] = None
        if self.duty:
            self.uart.write(pms.CMD_WAKE)
            await self.board.sleep_ms(pms.WARMUP_S * 1000)
            self.laser_s += pms.WARMUP_S
        else:
            self.laser_s += self.sample_s
        self.uart.read()  # stale bytes from before this slot
        await self.board.sleep_ms(1500)  # a frame arrives every ~1 s in active mode
        data = self.uart.read()
        pm = self.pm.feed(data) if data else None
        if self.duty:
            self.uart.write(pms.CMD_SLEEP)
        if pm is not None:
            v[0], v[1], v[2] = pm
        th = self.sht.read()
        if th is not None:
            v[3], v[4] = th
        if self.scd is not None:
            c = self.scd.read()
            if c is not None:
                v[7] = c[0]
        if self.no2 is not None:
            v[6] = self.no2.read(v[3])
        cal = self.cal
        if v[3] is not None and "temp_offset" in cal:
            v[3] += int(cal["temp_offset"])  # enclosure self-heating, measured at install
        if v[4] is not None and v[4] > 1000:
            v[4] = 1000
        self.agg.add(v)

    def take(self):
        return self.agg.take()

    def health(self):
        h = {"pm_err": self.pm.bad_checksum, "th_err": self.sht.errors, "laser_h": self.laser_s // 3600}
        if self.scd is not None:
            h["co2_err"] = self.scd.errors
        if self.no2 is not None:
            h["no2_err"] = self.no2.errors
        return h


class TrafficKit:
    nch = len(wire.TRAFFIC_CHANNELS)
    POLL = detector.line("Q", [1])

    def __init__(self, board, cfg):
        p = _pins(cfg, TRAFFIC_PINS)
        self.board = board
        self.uart = board.uart(p["det_uart"], 115200, p["det_tx"], p["det_rx"], 4096)
        self.parser = detector.Parser()
        limits = (cfg.get("cal") or {}).get("class_dm")
        self.agg = aggregate.Traffic(tuple(limits) if limits else aggregate.CLASS_LIMITS_DM)
        self.uart.write(self.POLL)

    async def sample(self):
        data = self.uart.read()
        alive = self.parser.feed(data, self.agg.vehicle) if data else 0
        if alive:
            self.agg.sampled()
        self.uart.write(self.POLL)  # answered before the next slot if the detector lives

    def take(self):
        return self.agg.take()

    def health(self):
        return {"det_err": self.parser.bad_checksum + self.parser.bad_line, "vehicles": self.parser.vehicles}


def make(board, cfg):
    return AirKit(board, cfg) if cfg["kit"] == "air" else TrafficKit(board, cfg)


def _sleep_ms(board, ms):
    """Blocking sleep for the self-test (no event loop there); the simulator's board scales it."""
    if hasattr(board, "block_ms"):
        board.block_ms(ms)
        return
    import time
    time.sleep_ms(ms)


def probe(board, cfg):
    """Self-test: (ok, detail) after one short read of every sensor of the kit."""
    kit = make(board, cfg)
    if cfg["kit"] == "traffic":
        _sleep_ms(board, 500)
        data = kit.uart.read()
        alive = kit.parser.feed(data, kit.agg.vehicle) if data else 0
        return bool(alive), "detector answered" if alive else "detector silent on UART"
    got = []
    bad = []
    _sleep_ms(board, 1500)
    data = kit.uart.read()
    (got if data and kit.pm.feed(data) else bad).append("pm")
    (got if kit.sht.read() else bad).append("sht3x")
    if kit.scd is not None:
        (got if kit.scd.read() else bad).append("scd4x")
    if kit.no2 is not None:
        (got if kit.no2.read(None) is not None else bad).append("no2")
    return not bad, "ok: %s; failed: %s" % (",".join(got) or "-", ",".join(bad) or "-")
