"""Aftershock: an observability-first reliability platform for LLM inference."""

__version__ = "0.1.0"
