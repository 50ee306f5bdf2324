"""Reconnect back-off: the one policy for every link that retries (node MQTT and CoAP, the gateway's MQTT link).

Exponential with "equal jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter", 2015): the cap doubles
per failed attempt from ``min_ms`` up to ``max_ms``; the delay is half the cap plus a random part of the other
half, so it is never 0 and a township's nodes do not reconnect in lockstep after a broker restart. Sans-IO: the
caller supplies the random number (a float in [0, 1)), so tests pin it.
"""


def delay_ms(attempt, min_ms, max_ms, r):
    """Delay before reconnect ``attempt`` (0-based): ``cap = min(max_ms, min_ms * 2**attempt)``, then
    ``cap // 2 + int(r * (cap - cap // 2))``."""
    cap = min_ms
    while attempt > 0 and cap < max_ms:  # no big shifts: stops at max_ms
        cap *= 2
        attempt -= 1
    if cap > max_ms:
        cap = max_ms
    half = cap // 2
    return half + int(r * (cap - half))
