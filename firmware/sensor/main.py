"""Sensor/camera node entry point (copied to the board's root as main.py by ``lookout firmware flash``).

Everything role-independent lives in lookout_node/boot.py; the role itself comes from /config.json.
"""

from lookout_node import boot

boot.run()
