"""Dagster resources: connections to the source, the archive store, the warehouse and alerts."""
