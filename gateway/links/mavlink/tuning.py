"""Every timing of the drone bridge in one object, each value with where it comes from (aiocoap's habit).

Operator-facing knobs (heartbeat rate, link timeout, publish rates, the ACK wait) live in gateway.toml
(``[mavlink]``, gateway/core/config_mavlink.py); these are the protocol's own numbers. Tests pass a faster
``Tuning`` instead of sleeping through the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tuning:
    ack_timeout_s: float = 1.0  # COMMAND_ACK wait per attempt ([mavlink].ack_timeout_ms overrides); MAVSDK: 0.5 s
    command_retries: int = 3  # resends after the first attempt (MAVSDK MavlinkCommandSender::DEFAULT_RETRIES = 3)
    in_progress_s: float = 10.0  # silence allowed after MAV_RESULT_IN_PROGRESS before the next ACK (ours)
    command_cap_s: float = 120.0  # a command that keeps reporting IN_PROGRESS is given up after this (ours)
    mission_timeout_s: float = 1.5  # per mission-protocol step (~1.5 s, as QGC and MAVSDK use)
    mission_retries: int = 5  # resends of one mission step (up to 5, as QGC and MAVSDK)
    watchdog_s: float = 0.1  # how often link loss is checked (a tenth of MAVSDK's 3 s loss time would be 0.3 s)
    tail_fraction: float = 0.5  # decimation: the held latest value goes out at most this many periods late
    tcp_retry_s: float = 2.0  # reconnect wait of a TCP or serial endpoint (doubling to 30 s; ours)
    tcp_retry_max_s: float = 30.0
    max_peers: int = 64  # UDP source addresses remembered per udpin endpoint (bounded: one per sender)
    max_write_buffer: int = 65536  # bytes queued for a slow serial/TCP link before frames are dropped (counted)
    results_kept: int = 64  # finished command results per drone kept for a re-sent command id (like a node's cache)


__all__ = ["Tuning"]
