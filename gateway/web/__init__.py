"""The duty operator's web console: live map, devices, journal, clips, big screen (docs/WEB.md).

``WebConsole(gw)`` serves it beside a running gateway; ``make_app(gw)`` builds the aiohttp application alone
(tests, embedding). Every action goes through the gateway's operator API (``OperatorAPI.handle``).
"""

from lookout.gateway.web.app import make_app
from lookout.gateway.web.server import WebConsole, web_console

__all__ = ["WebConsole", "make_app", "web_console"]
