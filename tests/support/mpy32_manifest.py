# The frozen image the tests and benches run on the 32-bit Unix port (tests/support/mpy32.py builds it):
# the node's libraries as the Unix port freezes them (firmware/manifest_unix.py) plus the harness that drives
# a node over stdin (mpyhost.py), frozen too so that neither's bytecode takes heap.
include("../../firmware/manifest_unix.py")
module("mpyhost.py")
