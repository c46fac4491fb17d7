"""The node agent: one machine's disk service (and, later, its runtime)."""
