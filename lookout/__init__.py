"""Lookout: reservoir-side nodes, the township gateway, and the tools around them.

Installed, everything lives under this one name, so nothing else lands at the top of site-packages. The
parts are kept in the repository's top-level folders and mapped in by ``pyproject.toml``:

- ``lookout.protocols``  <- ``protocols/``  the sans-IO wire contract (also runs on MicroPython)
- ``lookout.firmware``   <- ``firmware/``   the node apps (MicroPython); package data for the builder
- ``lookout.gateway``    <- ``gateway/``    the asyncio service, its CLI and admin tools
- ``lookout.simulators`` <- ``simulators/`` simulated hardware: nodes running the real firmware, drones, recorders
- ``lookout.tools``      <- ``tools/``      installer tools: the firmware builder

docs/ARCHITECTURE.md opens with the map of who may import whom.
"""

__version__ = "0.1.0"
