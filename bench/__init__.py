"""Benchmarks. Not tests: each prints figures and ratios taken in one run, since these
machines are shared and noisy and only same-run comparisons mean anything."""
