"""Chaos drills: timed faults through the stack's fault proxy under load, judged and reported."""
