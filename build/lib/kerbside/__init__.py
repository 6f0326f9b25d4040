"""kerbside: city sensor networks that never silently lose data."""

__version__ = "0.1.0"
