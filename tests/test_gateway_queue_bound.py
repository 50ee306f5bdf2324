"""The gateway's queue for an offline device is bounded (``[commands] queue_limit``): past it a command is refused
at once (``offline``, saying the queue is full), never stored, so one dead node cannot fill the disk."""

from __future__ import annotations

import asyncio

import pytest

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.core.commands import CommandError, CommandService
from lookout.gateway.core.config import CommandsConfig, RegistryConfig
from lookout.gateway.core.registry import Registry


def test_offline_queue_is_bounded_per_device(tmp_path):
    async def main():
        ks = KeyStore(tmp_path / "ks.db")
        ks.ensure("spk-01", "dongshan", "speaker")
        ks.ensure("spk-02", "dongshan", "speaker")
        reg = Registry(RegistryConfig(), tmp_path / "registry.db")
        cs = CommandService(CommandsConfig(queue_limit=3), ks, reg, tmp_path / "commands.db")
        try:
            for i in range(3):
                c = await cs.issue("spk-01", "play", {"clip": f"c{i}"})
                assert c.status == "queued"
            with pytest.raises(CommandError, match="queue for spk-01 is full") as e:
                await cs.issue("spk-01", "play", {"clip": "one-too-many"})
            assert e.value.code == "offline"
            assert len(cs.queued("spk-01")) == 3  # the refused one was never stored
            assert (await cs.issue("spk-02", "play", {"clip": "c0"})).status == "queued"  # per device
        finally:
            cs.close()
            reg.close()
            ks.close()

    asyncio.run(main())
