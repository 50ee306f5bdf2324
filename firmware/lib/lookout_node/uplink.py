"""Choose the node's uplink from its config: the MQTT session (default) or the CoAP link (battery nodes).

Theory of operation: node.py builds its uplink with exactly the keyword arguments of ``MQTTClient``;
``make_uplink(config, **those)`` returns an ``MQTTClient`` for ``"transport": "mqtt"`` and a ``CoAPLink`` for
``"transport": "coap"``, handing the CoAP link the arguments that mean something to it (birth, will, on_log,
rand, backoff) and dropping the MQTT-only ones (client id, credentials, TLS, keepalive, on_message...). Both
objects offer what node.py uses: ``connected`` (Event), ``is_connected()``, ``start()``, ``publish(topic,
payload, qos, retain)`` raising ``mqtt.NotConnected`` when the outbox must keep the message, ``subscribe()``,
``disconnect(publish_will)``. Only the chosen transport's module is imported (heap on a node).
"""

from protocols import defaults as _D

# MQTTClient keyword arguments the CoAP link understands too; every other one is MQTT-only and ignored.
COAP_SHARED_KWARGS = ("birth", "will", "on_log", "rand", "backoff_min_ms", "backoff_max_ms")
# CoAP tunables accepted as keyword arguments or from the config's "coap" object (unknown keys are kept there).
COAP_TUNABLES = ("ack_timeout_ms", "random_factor", "max_retransmit", "response_timeout_ms", "poll_ms",
                 "sock_factory")


def transport_of(config):
    return config.get("transport") or "mqtt"


def make_uplink(config, **kwargs):
    """The uplink ``config`` asks for. ``kwargs``: MQTTClient's keyword arguments (``host``/``port`` default to
    ``config["broker"]``), plus CoAP tunables (``ack_timeout_ms``... ``sock_factory``) used in CoAP mode."""
    t = transport_of(config)
    if t == "coap":
        from lookout_node.coap_link import CoAPLink

        co = config["coap"]
        opts = {}
        for k in COAP_TUNABLES:
            if k in co:
                opts[k] = co[k]
        for k in COAP_SHARED_KWARGS + COAP_TUNABLES:
            if k in kwargs:
                opts[k] = kwargs[k]
        return CoAPLink(co["host"], co.get("port", _D.COAP_PORT), site=config["site"], device=config["id"], **opts)
    if t != "mqtt":
        raise ValueError("transport: %r, expected mqtt or coap" % (t,))
    from lookout_node.mqtt import MQTTClient

    for k in COAP_TUNABLES:
        kwargs.pop(k, None)
    b = config["broker"]
    host = kwargs.pop("host", b["host"])
    port = kwargs.pop("port", b.get("port"))
    return MQTTClient(host, port, **kwargs)
