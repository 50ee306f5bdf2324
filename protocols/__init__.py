"""Lookout wire contract: sans-IO codecs shared by the firmware (MicroPython) and the gateway (CPython).

Theory of operation: every module here turns bytes into events (or objects into bytes) and never touches a
socket, a clock, a file or a logger. Time, when a rule needs it, is passed in as integer milliseconds. Import
the module you need (``from protocols import topics``); this package imports nothing on its own so that a
node with 100 kB of heap pays only for what it uses.
"""

PROTOCOL_VERSION = 1
__version__ = "0.1.0"
