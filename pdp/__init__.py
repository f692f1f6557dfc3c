"""Policy decision point for municipal access to the employment-services client data."""

__version__ = "0.1.0"
