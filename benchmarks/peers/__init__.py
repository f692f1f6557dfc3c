"""Peers for the benchmark: the same rules in other engines."""
