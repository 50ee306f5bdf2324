"""The embedded amqtt broker (gateway/broker.py) with real paho clients: pub/sub, retained, last will."""

from __future__ import annotations

import asyncio
import queue
import threading

import paho.mqtt.client as mqtt
import pytest

from lookout.gateway.links.broker import EmbeddedBroker, broker_config

TIMEOUT = 5.0


class BrokerThread:
    """Runs an EmbeddedBroker in its own event loop thread so the tests can use blocking paho clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.broker = EmbeddedBroker()
        self.errors: list[dict] = []  # unhandled exceptions inside the broker's loop (amqtt connection tasks)
        self.loop.set_exception_handler(lambda _loop, ctx: self.errors.append(ctx))

    def __enter__(self) -> BrokerThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.broker.start(), self.loop).result(TIMEOUT)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.broker.stop(), self.loop).result(TIMEOUT)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


@pytest.fixture
def embedded():
    with BrokerThread() as bt:
        bt.broker.loop_errors = bt.errors
        yield bt.broker


def client(
    broker: EmbeddedBroker, cid: str, will: tuple[str, bytes] | None = None
) -> tuple[mqtt.Client, queue.Queue]:
    q: queue.Queue = queue.Queue()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid)
    c.on_message = lambda _c, _u, m: q.put((m.topic, m.payload, m.retain))
    connected = threading.Event()
    c.on_connect = lambda *_a: connected.set()
    if will:
        c.will_set(will[0], will[1], qos=1, retain=True)
    c.connect(broker.host, broker.port, keepalive=30)
    c.loop_start()
    assert connected.wait(TIMEOUT), "no CONNACK from the embedded broker"
    return c, q


def subscribe(c: mqtt.Client, topic: str) -> None:
    done = threading.Event()
    c.on_subscribe = lambda *_a: done.set()
    c.subscribe(topic, qos=1)
    assert done.wait(TIMEOUT), "no SUBACK"


def close(c: mqtt.Client) -> None:
    c.disconnect()
    c.loop_stop()


def test_config_is_loopback_and_minimal():
    cfg = broker_config("127.0.0.1", 0)
    assert cfg["listeners"]["default"]["bind"] == "127.0.0.1:0"
    assert list(cfg["plugins"]) == ["amqtt.plugins.authentication.AnonymousAuthPlugin"]  # no $SYS, no loggers
    with pytest.raises(ValueError, match="loopback"):
        EmbeddedBroker(host="0.0.0.0")
    with pytest.raises(ValueError, match="port"):
        EmbeddedBroker(port=70000)


def test_url_and_free_port(embedded):
    assert embedded.port > 0
    assert embedded.url == "mqtt://127.0.0.1:%d" % embedded.port


def test_publish_subscribe_qos1(embedded):
    sub, q = client(embedded, "sub-1")
    subscribe(sub, "lookout/v1/dongshan/+/hb")
    pub, _ = client(embedded, "spk-01")
    pub.publish("lookout/v1/dongshan/spk-01/hb", b'{"seq":1}', qos=1).wait_for_publish(TIMEOUT)
    assert q.get(timeout=TIMEOUT) == ("lookout/v1/dongshan/spk-01/hb", b'{"seq":1}', False)
    close(pub)
    close(sub)


def test_retained_for_late_subscriber(embedded):
    pub, _ = client(embedded, "spk-01")
    pub.publish("lookout/v1/dongshan/spk-01/state", b'{"online":true}', qos=1, retain=True).wait_for_publish(
        TIMEOUT
    )
    close(pub)
    late, q = client(embedded, "late")
    subscribe(late, "lookout/v1/dongshan/+/state")
    topic, payload, retain = q.get(timeout=TIMEOUT)
    assert (topic, payload, retain) == ("lookout/v1/dongshan/spk-01/state", b'{"online":true}', True)
    close(late)


def test_last_will_on_abrupt_disconnect(embedded):
    watcher, q = client(embedded, "watcher")
    subscribe(watcher, "lookout/v1/dongshan/+/state")
    will = ("lookout/v1/dongshan/sen-02/state", b'{"online":false,"bdseq":0}')
    node, _ = client(embedded, "sen-02", will=will)
    node.loop_stop()
    node.socket().close()  # no DISCONNECT packet: the broker must publish the will
    topic, payload, _retain = q.get(timeout=TIMEOUT)
    assert (topic, payload) == will
    close(watcher)
    # the will was retained, so a later subscriber sees the node as offline too
    late, q2 = client(embedded, "late")
    subscribe(late, "lookout/v1/dongshan/+/state")
    assert q2.get(timeout=TIMEOUT)[:2] == will
    close(late)


def test_no_unsolicited_retained_on_connect(embedded):
    """amqtt 0.12.1 sends every client's retained matches to each new client; the patched broker does not."""
    gw, _ = client(embedded, "gw")
    subscribe(gw, "lookout/v1/dongshan/+/state")
    pub, _ = client(embedded, "spk-01")
    pub.publish("lookout/v1/dongshan/spk-01/state", b'{"online":true}', qos=1, retain=True).wait_for_publish(
        TIMEOUT
    )
    close(pub)
    other, q = client(embedded, "spk-02")  # subscribes to nothing
    subscribe(other, "lookout/v1/dongshan/spk-02/cmd")
    with pytest.raises(queue.Empty):
        q.get(timeout=0.5)
    close(other)
    close(gw)


def test_many_clients_connecting_and_subscribing_at_once(embedded):
    """Concurrent CONNECT + SUBSCRIBE crashed amqtt 0.12.1 ("dictionary changed size during iteration")."""
    n = 20
    # a retained message matching another client's filter makes amqtt await inside its subscription loop
    watcher, _ = client(embedded, "watcher")
    subscribe(watcher, "lookout/v1/dongshan/+/state")
    watcher.publish("lookout/v1/dongshan/gw/state", b"{}", qos=1, retain=True).wait_for_publish(TIMEOUT)
    clients = [watcher]
    queues = []
    ready = threading.Barrier(n + 1)
    subscribed = []

    def one(i: int) -> None:
        q: queue.Queue = queue.Queue()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="node-%02d" % i)
        c.on_message = lambda _c, _u, m: q.put(m.payload)
        ev = threading.Event()
        c.on_connect = lambda cl, *_a: cl.subscribe("lookout/v1/dongshan/node-%02d/cmd" % i, 1)
        c.on_subscribe = lambda *_a: ev.set()
        clients.append(c)
        queues.append((i, q))
        subscribed.append(ev)
        ready.wait(TIMEOUT)
        c.connect(embedded.host, embedded.port)
        c.loop_start()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    ready.wait(TIMEOUT)
    for t in threads:
        t.join(TIMEOUT)
    assert all(ev.wait(TIMEOUT) for ev in subscribed), "a client got no SUBACK"
    pub, _ = client(embedded, "gw")
    for i in range(n):
        pub.publish("lookout/v1/dongshan/node-%02d/cmd" % i, b"%d" % i, qos=1).wait_for_publish(TIMEOUT)
    for i, q in queues:
        assert q.get(timeout=TIMEOUT) == b"%d" % i, "node-%02d got something else first" % i
    assert [str(e.get("exception")) for e in embedded.loop_errors] == []
    for c in clients + [pub]:
        close(c)
