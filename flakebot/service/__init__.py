"""The service: the scheduler, nightly cycles, review commands and their answers."""
