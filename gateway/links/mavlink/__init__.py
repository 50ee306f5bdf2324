"""The drone bridge: MAVLink 2 vehicles (ArduPilot, PX4) as Lookout devices.

Modules, bottom up: ``codec`` (pymavlink's generated dialect, sans-IO), ``signing`` (MAVLink 2 signatures),
``decimate`` (rate limits that always deliver the latest value), ``vehicle`` (one drone's state and its MQTT
messages), ``endpoints`` (UDP/TCP/serial on the event loop), ``router`` (mavlink-router's forwarding),
``sender`` (command and mission protocols), ``actions`` (Lookout commands -> MAVLink, geofence), ``bridge`` (all of
it wired to the registry, the command path and MQTT), ``metrics``, ``tuning``.
"""

from lookout.gateway.links.mavlink.bridge import BridgeError, DroneBridge, DroneTransport

__all__ = ["BridgeError", "DroneBridge", "DroneTransport"]
