"""One boot of a simulated node through firmware/main.py, in an interpreter of its own (a reboot).

usage: python ota_boot.py ROOT KIT SPEEDUP TRIAL_S

ROOT is the node's flash (a SimBoard root); main.py picks the firmware from
its journal, so the knode imported here is the update's when one is installed.
Prints KS_RESET when the node resets (main.py's end, or a reboot command).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from kerbside.simulator.city import Site
from kerbside.simulator.clock import VirtualClock
from kerbside.simulator.hardware import Reboot, SimBoard

MAIN = Path(__file__).resolve().parents[2] / "firmware" / "main.py"


def main() -> None:
    root, kit, speedup, trial_s = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    board = SimBoard(1, Path(root), VirtualClock(time.time(), speedup), Site(48.2, 16.37, True), kit, 1)
    # A fresh interpreter on a node has imported no knode: the simulator did (its fake sensors), so forget it
    # and let main.py decide where knode comes from.
    for name in [m for m in sys.modules if m == "knode" or m.startswith("knode.")]:
        del sys.modules[name]
    ns: dict = {"__name__": "kmain"}
    exec(compile(MAIN.read_text(), str(MAIN), "exec"), ns)
    ns["TRIAL_S"] = trial_s
    try:
        ns["start"](root, board)
    except Reboot:
        print("KS_RESET", flush=True)


if __name__ == "__main__":
    main()
