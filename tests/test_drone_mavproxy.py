"""A real ground station flies the drone simulator: MAVProxy (from PyPI, the test extra) run headless as a process.

It must see the vehicle, its flight mode and its position, and change its mode: what a pilot on the duty desk does
with the simulator when the gateway is not in the loop.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path

from lookout.simulators.drone import Config, SimDrone

MAVPROXY = Path(sys.executable).with_name("mavproxy.py")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mavproxy_sees_the_vehicle_its_mode_and_position_and_changes_its_mode(tmp_path):
    assert MAVPROXY.exists(), f"MAVProxy is not installed next to {sys.executable} (pip install -e '.[test]')"

    async def main():
        port = free_udp_port()
        lines: list[str] = []
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(MAVPROXY), f"--master=udpin:127.0.0.1:{port}", "--nodtr",
            f"--state-basedir={tmp_path}", "--target-system=1", cwd=tmp_path,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "HOME": str(tmp_path)})

        async def read() -> None:
            assert proc.stdout is not None
            while line := await proc.stdout.readline():
                lines.append(line.decode(errors="replace"))
        reader = asyncio.create_task(read())

        async def saw(text: str, timeout: float = 15.0) -> str:
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                hit = next((ln for ln in lines if text in ln), None)
                if hit:
                    return hit
                if proc.returncode is not None:
                    break
                await asyncio.sleep(0.05)
            raise AssertionError(f"MAVProxy never printed {text!r}; it printed:\n{''.join(lines)[-3000:]}")

        def say(cmd: str) -> None:
            assert proc.stdin is not None
            proc.stdin.write(cmd.encode() + b"\n")

        try:
            async with SimDrone(Config(sysid=1, lat=30.25, lon=120.15), f"udp:127.0.0.1:{port}") as sim:
                await saw("Detected vehicle 1:1")
                await saw("Mode STABILIZE")
                say("mode GUIDED")
                await saw("DO_SET_MODE: ACCEPTED")
                await saw("Mode GUIDED")
                assert sim.vehicle.mode == 4
                say("status GLOBAL_POSITION_INT")
                pos = await saw("GLOBAL_POSITION_INT {")
                assert "lat : 302500000" in pos and "lon : 1201500000" in pos
        finally:
            if proc.returncode is None:
                proc.kill()  # MAVProxy waits seconds on its module threads after "exit" or SIGTERM: not our test
                await proc.wait()
            reader.cancel()

    asyncio.run(asyncio.wait_for(main(), 40))
