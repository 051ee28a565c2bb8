"""`make bench`: the side-by-side benchmark (bench/run.py). See docs/capacity.md."""
