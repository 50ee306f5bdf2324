"""Prometheus endpoint: devices by state, messages, queue depths, command latency."""

from __future__ import annotations

import asyncio
import dataclasses
import urllib.request

from gwserve import serving
from test_gateway_commands import make_cfg, node, until

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.service.app import Gateway


def test_metrics_endpoint(mosquitto, tmp_path):
    async def main():
        cfg = dataclasses.replace(make_cfg(tmp_path, mosquitto.url), metrics_listen="127.0.0.1:0")
        ks = KeyStore(tmp_path / "ks.db")
        n = node(mosquitto, ks)
        ks.ensure("spk-09", "dongshan", "speaker")
        async with serving(Gateway(cfg, keystore=ks)) as gw:
            await asyncio.to_thread(n.start)
            await until(lambda: gw.registry.get("spk-01") and gw.registry.get("spk-01").live)
            c = await gw.commands.issue("spk-01", "play", {"clip": "x"})
            await gw.commands.wait([c.id], "final", 5)
            await gw.commands.issue("spk-09", "play", {"clip": "x"})  # offline: queued
            url = f"http://127.0.0.1:{gw.metrics_port}/metrics"
            text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
            assert 'lookout_devices{kind="speaker",state="online"} 1.0' in text
            assert 'lookout_devices{kind="gateway",state="online"} 1.0' in text
            assert 'lookout_commands{status="queued"} 1.0' in text
            assert 'lookout_commands_final_total{status="done"} 1.0' in text
            assert "lookout_command_latency_seconds_count 1.0" in text
            assert 'lookout_messages_in_total{channel="res"}' in text
            assert 'lookout_messages_out_total{channel="cmd"} 1.0' in text
        n.stop()
        ks.close()

    asyncio.run(main())
