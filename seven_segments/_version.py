"""The version of the seven_segments package."""

__version__ = "0.1.0"
