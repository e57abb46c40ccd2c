"""Helpers and stand-ins shared by the tests, benchmarks and scripts (no tests, no fixtures)."""
