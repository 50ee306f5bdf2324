"""Connections to the outside: the MQTT link, the embedded broker, the CoAP bridge, the operator API client.

Drone (MAVLink) and recorder (serial) bridges join here. A link may use ``core``; it never holds the service.
"""
