"""flakebot: find the commit that made an intermittent CI failure more frequent."""

__version__ = "0.1.0"
