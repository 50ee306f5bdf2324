"""Big-screen mode for the wall display: the whole map and the latest alerts, readable from 5 m."""

from lookout.gateway.web.views.frame import View

VIEW = View("wall", "/wall", "wall.html", ("sitemap.js", "wall.js"), "nav_wall")
