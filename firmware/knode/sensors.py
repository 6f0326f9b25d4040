# kerbside node firmware - the sensor set of each kit.
#
# A kit object is what the core's sampler sees: sample() once per sample slot
# (async: sensors need time to answer), take() at the end of an interval
# giving (samples, values) in wire.py's channel order, health() for status.
# Pins come from knode.pins: the board's defaults (hardware/*.md) with the
# config's "pins" over them, checked for the board before anything is opened.
from knode import aggregate, wire
from knode.hal import unload

CAPTURE_MS = 3000  # a PM frame comes every 2.3 s in stable mode: wait up to this for one
FIRST_MS = 2300
POLL_MS = 350
MIN_SLEEP_S = 10   # duty-cycle the PM laser only if it can sleep at least this long per interval


def pin_map(board, cfg):
    from knode import pins
    try:
        return pins.resolve(cfg.get("board") or board.chip() or "esp32", cfg["kit"], cfg.get("pins") or {})
    finally:
        unload("pins")  # only needed at start
        unload("config")  # pins imported it for ConfigError


class AirKit:
    nch = len(wire.AIR_CHANNELS)

    def __init__(self, board, cfg):
        p = pin_map(board, cfg)
        self.board = board
        self.cfg = cfg  # the node's config dict: set_interval changes it in place
        self.cal = cfg.get("cal") or {}
        self.uart = board.uart(p["pm_uart"], 9600, p["pm_tx"], p["pm_rx"], 512)
        self.sds = p["pm"] == "sds011"
        if self.sds:
            from knode.drivers import sds011 as pmdrv
        else:
            from knode.drivers import pms as pmdrv
        self.pmdrv = pmdrv  # only the PM sensor this node has is loaded
        self.pm = pmdrv.Parser()
        self.pm_set = board.pin(p["pm_set"]) if p["pm_set"] is not None and not self.sds else None
        self.pm_silent = 0  # PM slots without a single good frame: a dead or unplugged sensor
        from knode.drivers import sensirion
        i2c = board.i2c(p["scl"], p["sda"])
        sleep = board.sleep_ms
        self.sht = sensirion.SHT3x(i2c, sleep)
        self.scd = sensirion.SCD4x(i2c, sleep) if p["co2"] else None
        self.no2 = None
        if p["no2"]:
            if p["no2_adc"] == "ads1115":
                from knode.drivers import ads1115
                ads = ads1115.ADS1115(i2c, sleep, p["ads_addr"])
                we, ae = ads1115.Channel(ads, p["no2_we_ch"]), ads1115.Channel(ads, p["no2_ae_ch"])
            else:
                from knode.drivers import no2
                we, ae = no2.Esp32Input(board.adc(p["no2_we"])), no2.Esp32Input(board.adc(p["no2_ae"]))
            from knode.drivers.no2 import NO2
            self.no2 = NO2(we, ae, self.cal)
        self.awake = True  # a PM sensor runs from power-on until told to sleep
        self.woke_ms = board.ticks_ms()
        self.laser_ms = 0
        self.agg = aggregate.Mean(self.nch)
        self.vals = [None] * self.nch

    # -- PM duty cycle -------------------------------------------------------
    def _plan(self):
        """(slot where PM is read, slot where the sensor is woken) for this interval, or None to
        run it continuously: it is read in the last slot, after a full warm-up, and sleeps the
        rest of the interval if that leaves it asleep at least MIN_SLEEP_S."""
        period, sample = self.cfg["period"], self.cfg["sample"]
        last = period // sample - 1
        wake = (last * sample - self.pmdrv.WARMUP_S) // sample
        if wake < 1 or wake * sample < MIN_SLEEP_S:
            return None
        return last, wake

    def _power(self, on):
        if on == self.awake:
            return
        now = self.board.ticks_ms()
        if not on:
            self.laser_ms += now - self.woke_ms
        self.woke_ms = now
        self.awake = on
        if self.pm_set is not None:
            self.pm_set.value(1 if on else 0)
        else:
            self.uart.write(self.pmdrv.CMD_WAKE if on else self.pmdrv.CMD_SLEEP)

    async def _capture(self):
        """The first good frame after this moment, or None (counted) after CAPTURE_MS."""
        self.uart.read()  # bytes from before this slot
        waited = 0
        step = FIRST_MS  # one frame period first: in stable mode the frame is there by then
        while waited < CAPTURE_MS:
            await self.board.sleep_ms(step)
            waited += step
            step = POLL_MS
            data = self.uart.read()
            if data:
                pm = self.pm.feed(data)
                if pm is not None:
                    return pm
        self.pm_silent += 1
        return None

    async def sample(self):
        v = self.vals
        for i in range(self.nch):
            v[i] = None
        b = self.board
        plan = self._plan()
        if plan is None:
            self._power(True)
            read_pm = True
        else:
            slot = (b.time() % self.cfg["period"]) // self.cfg["sample"]
            self._power(plan[1] <= slot <= plan[0])  # asleep outside its window, from power-on on
            read_pm = slot == plan[0]
        if read_pm:
            warm = self.pmdrv.WARMUP_S * 1000
            if self.awake and b.ticks_ms() - self.woke_ms >= warm:  # never a frame from a sensor warming up
                pm = await self._capture()
                if pm is not None:
                    v[0], v[1], v[2] = pm
            if plan is not None:
                self._power(False)
        th = await self.sht.read()
        if th is not None:
            v[3], v[4] = th
        if self.scd is not None:
            c = await self.scd.read()
            if c is not None:
                v[7] = c[0]
        if self.no2 is not None:
            v[6] = await self.no2.read(v[3])
        cal = self.cal
        if v[3] is not None and "temp_offset" in cal:
            v[3] += int(cal["temp_offset"])  # enclosure self-heating, measured at install
        if v[4] is not None and v[4] > 1000:
            v[4] = 1000
        self.agg.add(v)

    def take(self):
        return self.agg.take()

    def laser_s(self):
        on = self.board.ticks_ms() - self.woke_ms if self.awake else 0
        return (self.laser_ms + on) // 1000

    def health(self):
        h = {"pm_err": self.pm.bad_checksum + self.pm_silent, "th_err": self.sht.errors,
             "laser_h": self.laser_s() // 3600}
        if self.scd is not None:
            h["co2_err"] = self.scd.errors
        if self.no2 is not None:
            h["no2_err"] = self.no2.errors
        return h


class TrafficKit:
    nch = len(wire.TRAFFIC_CHANNELS)

    def __init__(self, board, cfg):
        from knode.drivers import detector
        self.POLL = detector.line("Q", [1])
        p = pin_map(board, cfg)
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
