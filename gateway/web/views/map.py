"""The site map: every device where it is, in its state; act on a device or a point in two clicks."""

from lookout.gateway.web.views.frame import View

VIEW = View("map", "/map", "map.html", ("sitemap.js", "map.js"), "nav_map")
