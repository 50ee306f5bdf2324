# Freeze Lookout's node libraries into MicroPython's Unix port: the same node code as firmware/manifest.py, on
# the port the tests and benches run as a stand-in board (tests/support/mpy32.py builds it 32-bit, like an
# ESP32, from MicroPython v1.28.0's source).
#
# The Unix port has no boards/manifest.py; its standard variant's manifest brings asyncio (and a few
# micropython-lib packages it freezes anyway). Below that, the lines are firmware/manifest.py's own:
# tests/test_firmware_code_in_flash.py checks that both manifests freeze the same node code.
#
#   make -C ports/unix CC="gcc -m32" LD="gcc -m32" FROZEN_MANIFEST=$PWD/firmware/manifest_unix.py ...

include("$(PORT_DIR)/variants/standard/manifest.py")  # asyncio, as a board's own manifest brings it
require("ntptime")  # micropython-lib: wall-clock time over WiFi before the first GPS fix
package("protocols", base_path="..")
package("lookout_node", base_path="lib")
