"""Run logic for archive and replica, independent of Dagster (used by assets and the CLI)."""
