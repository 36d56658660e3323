"""Benchmarks (`make bench`): append throughput, projection throughput and end-to-end latency.

Everything runs side by side in one run, against one throw-away dev stack (PostgreSQL with fsync on, and
Tansu), started on free ports and always stopped. Results go to `bench/results.json`. Benchmarks are not
tests: they report what they measure and never fail on a missed target.
"""
