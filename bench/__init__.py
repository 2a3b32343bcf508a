"""MLServe's benchmarks: ``python -m bench`` (``make bench``). Never run by the tests.

Each benchmark measures MLServe and its baseline side by side in one run and
prints the ratio; see bench/README.md.
"""
