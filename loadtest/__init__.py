"""Tally's Locust suite: visitor classes, load shapes, thresholds. See docs/capacity.md."""
