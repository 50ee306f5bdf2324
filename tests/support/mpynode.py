"""The CPython side of a node on the 32-bit Unix port: start it, steer it, and a paho "gateway" that signs.

``MpyNode`` runs ``micropython -X heapsize=… -c "…mpyhost.main(…)"`` (tests/support/mpyhost.py, frozen into
the interpreter mpy32.py builds) in the node's own directory, its flash, with ``sys.path`` cut to the frozen
modules so nothing is imported from files. A reader thread collects its ``@@`` lines; ``ask`` and
``wait_event`` are bounded waits on a condition. ``kill()`` is a power cut (SIGKILL: the OS drops the TCP
link, the broker publishes the will); a new ``MpyNode`` on the same directory is the board booting again.

``PahoGateway`` stands in for the gateway on a real broker: it records everything under ``lookout/#``,
decodes per device and channel as messages arrive, signs commands with protocols/signing and waits on a
condition (no polling), so a bench can drive thousands of commands through it.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt

from lookout.gateway.links.mqtt import nodelay
from lookout.protocols import messages, signing

DEFAULT_HEAP_KB = 100  # a plain ESP32 without PSRAM leaves MicroPython about 100 KB


class NodeDied(AssertionError):
    pass


class MpyNode:
    """One node process. ``cfg`` is written to ``root/config.json`` when given (else the one there is used);
    ``opts`` are the MQTT client's options (node.py ``mqtt_opts``), e.g. a shorter reconnect backoff."""

    def __init__(self, exe: Path, root: Path, cfg: dict | None = None, heap_kb: int = DEFAULT_HEAP_KB,
                 speed: int = 8, pir: bool = False, opts: dict | None = None, log: bool = True,
                 prelude: str = "sys.path[:] = ['.frozen']\n") -> None:
        self.exe = Path(exe)
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        if cfg is not None:
            (self.root / "config.json").write_text(json.dumps(cfg))
        self.heap_kb = heap_kb
        self.args = {"speed": speed, "pir": pir, "opts": opts or {}, "log": log}
        self.prelude = prelude  # run first: where modules come from (frozen, or a ROMFS mount)
        self.events: list[dict] = []
        self.answers: list[dict] = []
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self.cond = threading.Condition()
        self.proc: subprocess.Popen | None = None
        self.online: dict | None = None
        self._asked = 0

    def add_clip(self, name: str, data: bytes) -> None:
        (self.root / "clips").mkdir(exist_ok=True)
        (self.root / "clips" / name).write_bytes(data)

    # ---- process ---------------------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> dict:
        """Boot and wait until the node is online; returns the online event (heap figures in bytes)."""
        a = self.args
        code = ("import sys\n" + self.prelude + "import mpyhost\nmpyhost.main(%r, %d, %r, %r, %r)\n"
                % (str(self.root), a["speed"], a["pir"], a["opts"], a["log"]))
        self.proc = subprocess.Popen([str(self.exe), "-X", "heapsize=%dk" % self.heap_kb, "-c", code],
                                     cwd=self.root, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=dict(os.environ, MICROPYPATH=".frozen"))
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        self.online = self.wait_event("online", timeout)
        return self.online

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            with self.cond:
                if line.startswith("@@"):
                    d = json.loads(line[2:])
                    (self.events if "ev" in d else self.answers).append(d)
                else:
                    self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        with self.cond:
            return "\n".join(self.lines)

    def _wait(self, pred: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                r = pred()
                if r:
                    return r
                if not self.alive() and not r:
                    raise NodeDied("node process ended (rc %s) waiting for %s:\n%s" % (
                    self.proc and self.proc.poll(), what, "\n".join(list(self.lines)[-30:])))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("timed out waiting for %s; node said:\n%s"
                                         % (what, "\n".join(list(self.lines)[-30:])))
                self.cond.wait(min(left, 0.5))

    def wait_event(self, ev: str, timeout: float = 10.0) -> dict:
        return self._wait(lambda: next((e for e in self.events if e["ev"] == ev), None), timeout,
                          "event " + ev)

    def ask(self, cmd: str, timeout: float = 10.0) -> dict:
        """Send one command line; its answer (commands are answered in order)."""
        assert self.proc is not None and self.proc.stdin is not None
        n = self._asked
        self._asked += 1
        self.proc.stdin.write((cmd + "\n").encode())
        self.proc.stdin.flush()
        r = self._wait(lambda: len(self.answers) > n, timeout, "answer to " + cmd)
        assert r
        a = self.answers[n]
        assert a.get("ok") == cmd.split()[0] and "error" not in a, a
        return a

    def heap(self) -> int:
        return int(self.ask("heap")["heap"])

    def stop(self, timeout: float = 10.0) -> str:
        """Graceful: the node publishes its death and disconnects; returns the exit reason."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"exit\n")
        self.proc.stdin.flush()
        reason = self.wait_event("exit", timeout)["reason"]
        self.proc.wait(timeout)
        return reason

    def kill(self) -> None:
        """Power cut: no DISCONNECT, the OS drops the TCP link."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def close(self) -> None:
        self.kill()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.proc is not None and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass


class PahoGateway:
    """paho on a real broker standing in for the gateway: records ``lookout/#``, signs commands with ``key``.
    Results are filed by command id, so ids must be unique across devices (the real gateway's are)."""

    def __init__(self, host: str, port: int, site: str, key: bytes, client_id: str = "gw-mpy32") -> None:
        self.site = site
        self.key = key
        self.cond = threading.Condition()
        self.by: dict[tuple[str, str], list[tuple[Any, bool]]] = collections.defaultdict(list)
        self.res: dict[str, list[dict]] = collections.defaultdict(list)
        self.subscribed = False
        self.ctr: dict[str, int] = collections.defaultdict(int)
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.c.on_connect = lambda c, u, f, rc, p=None: c.subscribe("lookout/#", 1)
        self.c.on_subscribe = self._suback
        self.c.on_disconnect = self._gone
        self.c.on_message = self._on
        self.c.on_socket_open = nodelay  # as the gateway's own link: no Nagle wait on small QoS 1 packets
        self.c.reconnect_delay_set(0.05, 0.5)
        self.c.connect(host, port)
        self.c.loop_start()
        self.wait(lambda: self.subscribed, 10, "gateway subscription")

    def _suback(self, *a: Any) -> None:
        with self.cond:
            self.subscribed = True
            self.cond.notify_all()

    def _gone(self, *a: Any) -> None:
        with self.cond:
            self.subscribed = False
            self.cond.notify_all()

    def _on(self, c: Any, u: Any, m: Any) -> None:
        parts = m.topic.split("/")
        if len(parts) < 5 or parts[2] != self.site:
            return
        dev, ch = parts[3], "/".join(parts[4:])
        payload = bytes(m.payload)
        try:
            body: Any = json.loads(payload)
        except ValueError:
            body = payload  # a clip chunk (dl/<tid>) is binary
        with self.cond:
            self.by[(dev, ch)].append((body, bool(m.retain)))
            if ch == "res" and isinstance(body, dict) and "id" in body:
                self.res[body["id"]].append(body)
            self.cond.notify_all()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()

    def wait(self, pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        with self.cond:
            r = self.cond.wait_for(pred, timeout)
            if not r:
                raise AssertionError("timed out waiting for %s" % what)
            return r

    def topic(self, device: str, ch: str) -> str:
        return "lookout/v1/%s/%s/%s" % (self.site, device, ch)

    def of(self, device: str, ch: str) -> list:
        """Decoded messages of one device and channel, in arrival order."""
        with self.cond:
            return [b for b, _ in self.by[(device, ch)]]

    def send(self, device: str, cid: str, name: str, args: dict | None = None, prio: int = 1,
             exp_ms: int = 60000, age_ms: int = 0, key: bytes | None = None,
             raw: bytes | None = None) -> bytes:
        """Sign and publish (QoS 1) a command; ``raw`` re-sends exact bytes. Returns the bytes sent."""
        if raw is None:
            self.ctr[device] += 1
            now = int(time.time() * 1000) - age_ms
            m = messages.command(cid, device, name, args or {}, now, now + exp_ms, prio, self.ctr[device])
            signing.sign(self.key if key is None else key, "cmd", m)
            raw = messages.encode("cmd", m)
        self.c.publish(self.topic(device, "cmd"), raw, 1)
        return raw

    def results(self, cid: str) -> list[dict]:
        with self.cond:
            out = list(self.res[cid])
        for m in out:
            signing.verify(self.key, "res", m)
        return out

    def final(self, cid: str, timeout: float = 10.0) -> dict:
        """The final result of command ``cid`` (MAC checked)."""
        self.wait(lambda: any(messages.is_final(m["status"]) for m in self.res[cid]), timeout,
                  "final result of " + cid)
        return next(m for m in self.results(cid) if messages.is_final(m["status"]))


def fetch_clip(gw: PahoGateway, device: str, cid: str, clip_id: str, data: bytes, tid: int, chunk: int = 4096,
               sha256: str | None = None, timeout: float = 20.0) -> dict:
    """The gateway's side of ``fetch_clip`` (docs/PROTOCOL.md §7): the signed command with the manifest, then,
    once accepted, every chunk QoS 1 on ``dl/<tid>`` in one burst; returns the final result. ``sha256``
    overrides the manifest's hash (a download that must fail)."""
    from lookout.protocols import cliptransfer

    s = cliptransfer.ClipSender(data, chunk, clip_id, tid, "audio", "audio/wav", 0)
    m = s.manifest
    gw.send(device, cid, "fetch_clip", {"clip": clip_id, "tid": tid, "size": m.size, "chunk": chunk,
                                        "sha256": sha256 or m.sha256})
    gw.wait(lambda: gw.res[cid], timeout, "fetch %s accepted" % cid)
    if gw.res[cid][0]["status"] == "accepted":
        for _, payload in s.chunks():
            gw.c.publish(gw.topic(device, "dl/%d" % tid), payload, 1)
    return gw.final(cid, timeout)
