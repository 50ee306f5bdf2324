"""Fuzzing every network-facing entry (issue 17): MQTT payloads on every topic the gateway and the node subscribe
to, CoAP and MAVLink datagrams, a recorder's serial byte stream, operator requests, gateway.toml and a node's
config.json; the world keeps serving after each entry and nothing raises out of a handler
(tests/support/fuzz_entries.py says what is fed and what is checked). A few hundred cases per entry here;
``-m slow`` and bench/fuzz_entries.py run 10,000."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from fuzz_entries import World, fuzz_configs

from lookout.gateway.links.coap_bridge import CoAPBridge

CI_CASES = 200
LONG_CASES = 10_000
NETWORK = ("mqtt:state", "mqtt:hb", "mqtt:loc", "mqtt:evt", "mqtt:res", "mqtt:up", "mqtt:opreq", "node:cmd",
           "node:dl", "node:gwstate", "coap", "mavlink", "serial")


@pytest.mark.mosquitto
@pytest.mark.parametrize("cases", [pytest.param(CI_CASES, id="ci"),
                                   pytest.param(LONG_CASES, id="long", marks=pytest.mark.slow)])
def test_every_network_entry_keeps_serving(mosquitto, tmp_path, cases):
    async def main():
        async with World(tmp_path, mosquitto) as w:
            counts = await w.network(cases)
            # what the gateway did with it: refused and counted, never acted on as genuine
            assert w.gw.commands.forged > 0 and w.gw.metrics.registry.get_sample_value(
                "lookout_messages_rejected_total", {"reason": "invalid"}) > 0
            return counts

    counts = asyncio.run(asyncio.wait_for(main(), 120 if cases == CI_CASES else 3600))
    assert set(counts) == set(NETWORK) and all(n >= cases for n in counts.values()), counts


@pytest.mark.parametrize("cases", [pytest.param(CI_CASES * 2, id="ci"),
                                   pytest.param(LONG_CASES, id="long", marks=pytest.mark.slow)])
def test_config_files_give_their_own_errors_only(tmp_path, cases):
    counts = fuzz_configs(tmp_path, cases)
    assert counts == {"config:gateway": cases + 1, "config:node": cases + 1}


def test_coap_datagram_with_an_option_that_is_not_utf8_is_ignored_without_a_traceback(caplog):
    """Found by the long entry fuzzing: aiocoap raised UnicodeDecodeError out of its UDP read callback for a
    Uri-Path that is not UTF-8, a traceback in the log per datagram (chrysn/aiocoap#176). Now one warning."""
    async def main():
        published = []

        async def publish(topic, payload, qos, retain):
            published.append(topic)

        async with CoAPBridge(publish, "127.0.0.1", 0) as br:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                # CON POST, MID 0x1234, no token; option 11 (Uri-Path), length 2: 0xff 0xfe
                s.sendto(bytes([0x40, 0x02, 0x12, 0x34, 0xB2, 0xFF, 0xFE]), ("127.0.0.1", br.port))
                await asyncio.sleep(0.3)
            finally:
                s.close()
        return published

    with caplog.at_level(logging.WARNING):
        assert asyncio.run(main()) == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text
    assert "unparsable" in caplog.text
