"""Distances on the ground: great-circle metres between WGS-84 points in degE7, and a local flat projection.

Theory of operation: a township spans a few kilometres, so the haversine on a sphere of the mean Earth radius is
exact to well under a metre for ranking, and an equirectangular projection around the area's centre is good
enough to draw a map (coverage SVG/PNG). Positions are WGS-84 degE7 integers everywhere in Lookout
(docs/PROTOCOL.md); a map front end that needs GCJ-02 converts at display time.
"""

from __future__ import annotations

import math

EARTH_R = 6371008.8  # m, mean Earth radius (IUGG)
E7 = 10_000_000


def haversine_m(lat1: int, lon1: int, lat2: int, lon2: int) -> float:
    """Great-circle distance in metres between two points given in degE7."""
    p1, p2 = math.radians(lat1 / E7), math.radians(lat2 / E7)
    dp, dl = p2 - p1, math.radians((lon2 - lon1) / E7)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_R * math.asin(min(1.0, math.sqrt(a)))


def to_e7(deg: float) -> int:
    return round(deg * E7)


class LocalProjection:
    """Metres east/north of a reference point (equirectangular): for drawing, not for ranking."""

    def __init__(self, lat0: int, lon0: int):
        self.lat0, self.lon0 = lat0, lon0
        self._m_per_e7_lat = math.pi * EARTH_R / 180 / E7
        self._m_per_e7_lon = self._m_per_e7_lat * math.cos(math.radians(lat0 / E7))

    def xy(self, lat: int, lon: int) -> tuple[float, float]:
        return (lon - self.lon0) * self._m_per_e7_lon, (lat - self.lat0) * self._m_per_e7_lat


__all__ = ["EARTH_R", "LocalProjection", "haversine_m", "to_e7"]
