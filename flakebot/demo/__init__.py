"""The demo: simulated hosts (also the sim executor's) and a generated SPDK-like repository."""
