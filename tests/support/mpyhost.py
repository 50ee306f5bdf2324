"""A node on MicroPython's Unix port, steered line by line over stdin: the harness of tests and benches, not
node code.

Runs the unchanged firmware (``lookout_node.node.Node``) on the host hardware layer (``hal_host.HostHal``)
against a real broker over TCP; what it adds is only what a test needs to steer a board from outside: a switch
for the network (as simulators/node.py's ``SimHal`` has), PIR edges, and heap figures. It is frozen into the
test image with the firmware (tests/support/mpy32_manifest.py) so that its bytecode, like the node's, takes no
heap; the node's modules are imported only after the baseline is taken.

``main(root, speed=8, pir=False, opts=None, log=False)`` boots a node from ``root/config.json`` (``opts``: the
MQTT client's options, e.g. a shorter backoff; ``log``: print the node's log lines). Output lines starting
with ``@@`` carry one JSON object each: ``{"ev": "online", "base", "boot"}`` once the node first connected
(heap in use before the node's imports and after boot, both after ``gc.collect()``), answers ``{"ok":
<command>, ...}``, and ``{"ev": "exit", "reason"}`` last. Commands, one a line:

- ``heap``: ``{"heap", "free"}`` after ``gc.collect()``;
- ``meminfo``: ``micropython.mem_info()`` after ``gc.collect()``, printed as plain lines (fragmentation:
  ``max free sz`` is the largest free block, in 16-byte blocks);
- ``status``: ``{"online", "outbox", "errs", "err", "plays"}``; ``plays`` is the stand-in speaker's record of
  its last 16 plays (bounded here, so that a long run measures the node, not the test double's log);
- ``pir``: one PIR edge (a node booted with ``pir=True``);
- ``net 0`` / ``net 1``: while 0, connection attempts fail (the link itself is left alone);
- ``watch`` then ``peak``: sample the heap every 20 ms in between, answer the largest figure;
- ``exit`` (or the end of stdin): stop the node (graceful shutdown) and return.
"""

import asyncio
import gc
import json
import sys


def _out(d):
    sys.stdout.write("@@" + json.dumps(d) + "\n")


def _heap():
    gc.collect()
    return gc.mem_alloc()


async def _sampler(st):
    while st[1]:
        st[0] = max(st[0], _heap())
        await asyncio.sleep_ms(20)


def _hal(root, speed, pir):
    from lookout_node import hal_host

    class NetHal(hal_host.HostHal):
        net = True

        def network_up(self):
            return self.net

        async def open_connection(self, host, port, ssl=None, server_hostname=None):
            if not self.net:
                raise OSError("network down (test switch)")
            return await hal_host.HostHal.open_connection(self, host, port, ssl, server_hostname)

    hal = NetHal(root, speed=speed, pir=pir)
    a = hal.audio
    start = a.start

    def start_bounded(*args, **kw):  # the stand-in speaker's log of plays: its last 16 only
        del a.plays[:-15]
        start(*args, **kw)

    a.start = start_bounded
    return hal


async def _serve(node, hal):
    rd = asyncio.StreamReader(sys.stdin)
    st = [0, False]
    while True:
        line = await rd.readline()
        if not line:  # end of stdin: the driver is gone
            return
        words = line.decode().split()
        if not words:
            continue
        cmd = words[0]
        r = {"ok": cmd}
        if cmd == "heap":
            r["heap"] = _heap()
            r["free"] = gc.mem_free()
        elif cmd == "meminfo":  # the GC's summary (largest free block...), plain lines before the answer
            gc.collect()
            import micropython

            micropython.mem_info()
        elif cmd == "status":
            r.update(online=node.online(), outbox=len(node.outbox), errs=node.errors, err=node.last_error,
                     plays=hal.audio.plays)
        elif cmd == "pir":
            hal.pir.trigger()
        elif cmd == "net":
            hal.net = words[1:] == ["1"]
        elif cmd == "watch":
            st[0], st[1] = _heap(), True
            asyncio.create_task(_sampler(st))
        elif cmd == "peak":
            st[1] = False
            r["peak"] = max(st[0], _heap())
        elif cmd == "exit":
            return
        else:
            r["error"] = "unknown command"
        _out(r)


async def _main(root, speed, pir, opts, log):
    base = _heap()
    from lookout_node.node import Node

    hal = _hal(root, speed, pir)
    node = Node(hal, opts, (lambda level, text: print(level, text)) if log else None)
    task = asyncio.create_task(node.run())
    while node.client is None:  # made first thing in run()
        if task.done():
            await task  # run() failed before connecting: its exception ends the process
        await asyncio.sleep_ms(5)
    await node.client.connected.wait()
    await asyncio.sleep_ms(100)  # birth, first heartbeat and location go out
    _out({"ev": "online", "base": base, "boot": _heap()})
    await _serve(node, hal)
    node.request_exit("stop")
    _out({"ev": "exit", "reason": await task})


def main(root, speed=8, pir=False, opts=None, log=False):
    asyncio.run(_main(root, speed, pir, opts, log))
