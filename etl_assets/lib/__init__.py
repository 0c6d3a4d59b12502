"""Pure building blocks: no Dagster import, no connections. Everything here is unit-testable."""
