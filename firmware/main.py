# kerbside node firmware - entry point on the ESP32 (after boot.py).
import asyncio

from knode import hal, ota

board = hal.Board()
ota.on_boot(board)  # before importing the application: roll back an unhealthy update

from knode import node  # noqa: E402

try:
    asyncio.run(node.Node(board).run())
except Exception as e:  # noqa: BLE001 - anything unexpected: log it and start clean
    import sys
    sys.print_exception(e)
board.reset()
