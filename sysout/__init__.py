"""sysout: systematic outliers in transformer language models."""

__version__ = "0.1.0"
