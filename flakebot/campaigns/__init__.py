"""Campaigns: dispatch of run requests, the bisection and verify loops, plain runs."""
