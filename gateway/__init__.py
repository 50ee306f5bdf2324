"""Lookout gateway: the asyncio service on the township server (CPython)."""
