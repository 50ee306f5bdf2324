"""Choose the node's uplink from its config: the MQTT session (default) or the CoAP link (battery nodes).

Theory of operation: node.py imports this module only for ``"transport": "coap"`` (an MQTT node builds its
``MQTTClient`` directly), passing exactly the keyword arguments of ``MQTTClient``;
``make_uplink(config, **those)`` returns an ``MQTTClient`` for ``"transport": "mqtt"`` and a ``CoAPLink`` for
``"transport": "coap"``, handing the CoAP link the arguments that mean something to it (birth, will, on_log,
rand, backoff) and dropping the MQTT-only ones (client id, credentials, TLS, keepalive, on_message...). Both
objects offer what node.py uses: ``connected`` (Event), ``is_connected()``, ``start()``, ``publish(topic,
payload, qos, retain)`` raising ``mqtt.NotConnected`` when the outbox must keep the message, ``subscribe()``,
``disconnect(publish_will)``. Only the chosen transport's module is imported (heap on a node).
"""


def make_uplink(config, **kwargs):
    """The uplink ``config`` asks for. ``kwargs``: MQTTClient's keyword arguments (``host``/``port`` default to
    ``config["broker"]``), plus CoAP tunables (``ack_timeout_ms``, ``random_factor``, ``max_retransmit``,
    ``response_timeout_ms``, ``poll_ms``, ``sock_factory``) used in CoAP mode, where they may also come from the
    config's ``coap`` object (unknown keys are kept there). The CoAP link also takes the MQTTClient arguments
    ``birth``, ``will``, ``on_log``, ``rand``, ``backoff_min_ms`` and ``backoff_max_ms``; every other one is
    MQTT-only and ignored. In CoAP mode the birth and the will are signed with the node's key (purpose
    ``state``): the gateway believes a CoAP node's state only with its MAC."""
    tunables = ("ack_timeout_ms", "random_factor", "max_retransmit", "response_timeout_ms", "poll_ms",
                "sock_factory")
    t = config.get("transport") or "mqtt"
    if t == "coap":
        from lookout_node.coap_link import CoAPLink
        from protocols.defaults import COAP_PORT

        co = config["coap"]
        opts = {}
        for src, keys in ((co, tunables), (kwargs, tunables + ("birth", "will", "on_log", "rand", "backoff_min_ms",
                                                              "backoff_max_ms"))):
            for k in keys:
                if k in src:
                    opts[k] = src[k]
        key = bytes.fromhex(config["key"])
        for k in ("birth", "will"):  # the bridge republishes under the gateway's login: state must carry our MAC
            if opts.get(k):
                opts[k] = _signed_state(key, opts[k])
        return CoAPLink(co["host"], co.get("port", COAP_PORT), site=config["site"], device=config["id"], **opts)
    if t != "mqtt":
        raise ValueError("transport: %r, expected mqtt or coap" % (t,))
    from lookout_node.mqtt import MQTTClient

    for k in tunables:
        kwargs.pop(k, None)
    b = config["broker"]
    return MQTTClient(kwargs.pop("host", b["host"]), kwargs.pop("port", b.get("port")), **kwargs)


def _signed_state(key, item):
    """``(topic, payload, ...)`` with the birth/death payload signed (purpose ``state``, docs/PROTOCOL.md §11)."""
    import json

    from protocols import messages, signing

    msg = json.loads(item[1])
    kind = "birth" if msg.get("online") is True else "death"
    return (item[0], messages.encode(kind, signing.sign(key, "state", msg))) + tuple(item[2:])
