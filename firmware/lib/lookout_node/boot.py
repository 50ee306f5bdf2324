"""Board start-up shared by every role's main.py.

Loads /config.json, builds the ESP32 hardware layer and runs the app (the role comes from the config); whenever
the app asks for a restart (reboot command, a config change on trial, a rollback) or anything escapes it, the
board resets: a clean boot is the one state known to work on a node nobody visits for months.
"""

import asyncio
import json
import sys

from lookout_node.hal_esp32 import Esp32Hal
from lookout_node.node import Node


def load_config():
    with open("/config.json") as f:
        return json.load(f)


async def app():
    cfg = load_config()
    hal = Esp32Hal(cfg)
    hal._cfg_for_net = cfg
    await hal.connect_network(cfg)
    node = Node(hal, log=lambda level, text: print(level, text) if level != "debug" else None)
    return await node.run()


def run():
    try:
        reason = asyncio.run(app())
        print("restart:", reason)
    except Exception as e:  # noqa: BLE001 - log, then reset
        sys.print_exception(e)
    import machine

    machine.reset()
