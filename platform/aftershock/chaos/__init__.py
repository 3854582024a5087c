"""Chaos: the fault-proxy topology of a stack (and, later, drills)."""
