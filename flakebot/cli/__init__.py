"""The command line: one module per command group; `main` is the entry point."""
from flakebot.cli.app import main

__all__ = ["main"]
