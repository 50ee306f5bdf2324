"""Operator client: sends operator-API requests to the gateway over MQTT and waits for the matching response.

Used by the ``lookout`` CLI (gateway/cli_gateway.py) and by the latency bench. The broker login is the operator
id with its token as password (what ``lookout provision operator`` creates); the same token goes in each request
so the gateway can check it against the key store. Responses are matched by request id, one future per id, and
every wait is bounded.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any, Self

from lookout.gateway.links.mqtt import MQTTLink
from lookout.protocols import opapi, topics


class ResponseError(Exception):
    """The gateway's answer to a request arrived but cannot be taken (over ``opapi.MAX_RESPONSE``, not a
    response): the request fails at once with the reason instead of waiting out its time-out."""


class OperatorClient:
    def __init__(self, url: str, site: str, operator: str, token: str, ca: str | None = None,
                 username: str | None = None, password: str | None = None, connect_timeout: float = 10.0):
        self.site, self.operator, self.token = site, operator, token
        self.link = MQTTLink(url, f"{operator}-{secrets.token_hex(4)}", username=username or operator,
                             password=password if password is not None else token, ca=ca,
                             connect_timeout=connect_timeout, fail_fast=True)  # a person waits: say at once
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._n = 0

    async def __aenter__(self) -> Self:
        self.link.subscribe(topics.topic(self.site, self.operator, "opres"), self._on_response, qos=1)
        await self.link.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.link.close()

    def _on_response(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            r = opapi.decode_response(payload)
        except opapi.OpAPIError as e:
            # the request it answers (if its id can be read at all) fails now, with the reason; dropping it
            # left the operator waiting out the time-out and then blaming the gateway
            fut = self._pending.pop(opapi.peek_id(payload) or "", None)
            if fut is not None and not fut.done():
                fut.set_exception(ResponseError(f"the gateway's answer cannot be read: {e}"))
            return
        fut = self._pending.pop(r.get("id") or "", None)
        if fut is not None and not fut.done():
            fut.set_result(r)

    async def request(self, op: str, args: dict[str, Any] | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """Send one request; return the response. Raises OpAPIError on bad arguments, TimeoutError if no answer."""
        self._n += 1
        rid = f"{secrets.token_hex(4)}.{self._n}"
        req = opapi.request(rid, op, self.token, dict(args or {}))
        payload = opapi.encode_request(req)  # validates: bad arguments fail here, before the network
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        await self.link.publish(topics.topic(self.site, self.operator, "opreq"), payload, qos=1, timeout=timeout)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self._pending.pop(rid, None)
