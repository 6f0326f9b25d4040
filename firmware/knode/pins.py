# kerbside node firmware - per-board pin maps, checked before any pin is touched.
#
# Why: a config written for an ESP32 (I2C on GPIO 22, detector on 25) names
# pins that do not exist on an ESP32-S3, and an ADC2 pin reads nothing while
# Wi-Fi is on. Each board has its own defaults (hardware/*.md) and its own
# rules; resolve() merges the config's "pins" over the defaults and raises
# ConfigError naming the key, the pin and the board, so the mistake shows up
# in the self-test at the depot, not as silent nulls on a lamp post.
from knode.config import ConfigError

# Per board: valid GPIOs, pins taken by the flash (never usable), input-only
# pins, ADC1 pins (ADC2 is unusable while Wi-Fi is on), defaults per kit.
BOARDS = {
    "esp32": {
        "gpio": tuple(range(0, 20)) + (21, 22, 23, 25, 26, 27) + tuple(range(32, 40)),
        "flash": (6, 7, 8, 9, 10, 11),
        "input_only": (34, 35, 36, 37, 38, 39),
        "adc1": (32, 33, 34, 35, 36, 37, 38, 39),
        "air": {"pm_uart": 1, "pm_tx": 17, "pm_rx": 16, "pm_set": None, "scl": 22, "sda": 21,
                "no2_we": 34, "no2_ae": 35},
        "traffic": {"det_uart": 2, "det_tx": 25, "det_rx": 26},
    },
    "esp32s3": {
        "gpio": tuple(range(0, 22)) + tuple(range(26, 49)),
        "flash": (26, 27, 28, 29, 30, 31, 32),
        "input_only": (),
        "adc1": (1, 2, 3, 4, 5, 6, 7, 8, 9, 10),
        "air": {"pm_uart": 1, "pm_tx": 17, "pm_rx": 18, "pm_set": None, "scl": 9, "sda": 8,
                "no2_we": 4, "no2_ae": 5},
        "traffic": {"det_uart": 2, "det_tx": 15, "det_rx": 16},
    },
    "esp32c3": {
        "gpio": tuple(range(0, 22)),
        "flash": (12, 13, 14, 15, 16, 17),
        "input_only": (),
        "adc1": (0, 1, 2, 3, 4),
        "air": {"pm_uart": 1, "pm_tx": 7, "pm_rx": 6, "pm_set": None, "scl": 5, "sda": 4,
                "no2_we": 2, "no2_ae": 3},
        "traffic": {"det_uart": 1, "det_tx": 7, "det_rx": 6},
    },
}
# Settings that are not GPIO numbers, with their defaults for every board.
OPTIONS = {"air": {"pm": "pms5003", "co2": 1, "no2": 1, "no2_adc": "esp32", "ads_addr": 0x48,
                   "no2_we_ch": 0, "no2_ae_ch": 1},
           "traffic": {}}
OUTPUTS = ("pm_tx", "pm_set", "scl", "sda", "det_tx")
ANALOG = ("no2_we", "no2_ae")


def _ranges(pins):
    out = []
    a = b = None
    for p in pins:
        if b is not None and p == b + 1:
            b = p
            continue
        if a is not None:
            out.append(str(a) if a == b else "%d-%d" % (a, b))
        a = b = p
    if a is not None:
        out.append(str(a) if a == b else "%d-%d" % (a, b))
    return ", ".join(out)


def resolve(board, kit, over):
    """The kit's pin map on board with the config's overrides; ConfigError for anything the board cannot do."""
    spec = BOARDS.get(board)
    if spec is None:
        raise ConfigError("board: %r is not one of %s" % (board, ", ".join(sorted(BOARDS))))
    p = dict(spec[kit])
    p.update(OPTIONS[kit])
    for k in over:
        if k not in p:
            raise ConfigError("pins.%s: not a %s kit setting (known: %s)" % (k, kit, ", ".join(sorted(p))))
        p[k] = over[k]
    analog = ANALOG if kit == "air" and p["no2"] and p["no2_adc"] == "esp32" else ()
    used = {}
    for k in sorted(spec[kit]):
        n = p[k]
        if k.endswith("_uart") or n is None or (k in ANALOG and not analog):
            continue
        if not isinstance(n, int) or n not in spec["gpio"]:
            raise ConfigError("pins.%s: GPIO %r does not exist on %s (GPIO %s)" % (k, n, board, _ranges(spec["gpio"])))
        if n in spec["flash"]:
            raise ConfigError("pins.%s: GPIO %d is wired to the flash on %s" % (k, n, board))
        if k in OUTPUTS and n in spec["input_only"]:
            raise ConfigError("pins.%s: GPIO %d is input-only on %s" % (k, n, board))
        if k in analog and n not in spec["adc1"]:
            raise ConfigError("pins.%s: GPIO %d is not an ADC1 pin on %s (ADC1: GPIO %s; ADC2 is off while "
                              "Wi-Fi is on)" % (k, n, board, _ranges(spec["adc1"])))
        if n in used:
            raise ConfigError("pins.%s: GPIO %d is already pins.%s" % (k, n, used[n]))
        used[n] = k
    if kit == "air":
        if p["pm"] not in ("pms5003", "sds011"):
            raise ConfigError("pins.pm: %r is not pms5003 or sds011" % (p["pm"],))
        if p["no2_adc"] not in ("esp32", "ads1115"):
            raise ConfigError("pins.no2_adc: %r is not esp32 or ads1115" % (p["no2_adc"],))
    return p
