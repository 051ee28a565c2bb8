"""Resilience drills: break the stack on purpose under load and measure what users and the data see.

``python -m drills --target native|compose --action ACTION`` (see drills/run.py and docs/reliability.md).
"""
