"""Clips: warning audio to preview and broadcast; evidence with its hash and custody trail."""

from lookout.gateway.web.views.frame import View

VIEW = View("clips", "/clips", "clips.html", ("clips.js",), "nav_clips")
