"""syncmon: an event-driven health and status monitor for data syncs."""

__version__ = "0.1.0"
