"""The running gateway: ``app`` wires core, links and clips into one asyncio service (``lookout gateway``)."""
