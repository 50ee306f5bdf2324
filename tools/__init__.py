"""Installer-side tools that are not part of the running gateway: the node firmware builder and flasher."""
