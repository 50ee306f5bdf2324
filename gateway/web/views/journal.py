"""The duty journal: newest first, paged, filtered by kind, device, operator and time; the chain's status."""

from lookout.gateway.web.views.frame import View

VIEW = View("journal", "/journal", "journal.html", ("journal.js",), "nav_journal")
