"""Lookout node firmware library: the modules that sit at the top of ``/lib`` on a MicroPython node.

The same files run under CPython 3.11 in CI (with a host hardware layer), so each module uses only what both
runtimes share. Import the module you need (``from lookout_node import mqtt``); this package imports nothing.
"""
