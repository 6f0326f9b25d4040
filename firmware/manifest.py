# Freeze the firmware into a MicroPython ESP32 build, so its bytecode runs from
# flash instead of the GC heap (~50 KB saved on a node with 64-100 KB free):
#   make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/firmware/manifest.py
# Without a custom build, provisioning uploads .mpy files to /lib/knode instead.
include("$(PORT_DIR)/boards/manifest.py")  # noqa: F821 - manifest functions exist only in the build
package("knode")  # noqa: F821
