# Freeze Lookout's node libraries into a MicroPython firmware image, for boards without a ROM partition.
#
# Frozen bytecode, its strings and its constants stay in flash; only the objects a module creates when it runs
# (its globals, classes, functions, data) take heap. Build MicroPython with this manifest, e.g. for an ESP32:
#
#   make -C ports/esp32 BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/lookout/firmware/manifest.py
#
# then flash that image with esptool and install the node with `lookout firmware flash ... --frozen`, which
# copies only main.py and config.json. Boards with ROMFS (MicroPython >= 1.25) need no custom build for their
# code: `lookout firmware flash --romfs` (docs/FIRMWARE.md, "Code in flash").

include("$(PORT_DIR)/boards/manifest.py")  # the board's own frozen modules (asyncio, ...)
require("ntptime")  # micropython-lib: wall-clock time over WiFi before the first GPS fix
package("protocols", base_path="..")
package("lookout_node", base_path="lib")
