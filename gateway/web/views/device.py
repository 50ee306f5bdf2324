"""One device: recent heartbeats, its track, its commands and results, its latest snapshot."""

from typing import Any

from aiohttp import web

from lookout.gateway.web.views.frame import View

VIEW = View("device", "/devices/{id}", "device.html", ("sitemap.js", "device.js"))


def context(request: web.Request) -> dict[str, Any]:
    return {"device": request.match_info["id"]}
