"""Linkage (联动): rules, incidents, nearest dispatch by travel time, coverage of the 15-minute circle."""
