"""Asset checks beyond the ones computed inside loads and observations."""
