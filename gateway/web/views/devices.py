"""The device list: state, last seen, battery, link; filter and search."""

from lookout.gateway.web.views.frame import View

VIEW = View("devices", "/devices", "devices.html", ("devices.js",), "nav_devices")
