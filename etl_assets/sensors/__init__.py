"""Sensors: what starts runs and what reports on them (alerts for failed runs and checks)."""
