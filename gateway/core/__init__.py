"""The gateway's domain state: device registry, command path, duty journal, storage, config, clock, metrics, logs.

Imports only ``lookout.protocols`` and the standard library (plus prometheus_client for metrics): everything here
can be driven by tests without a network.
"""
