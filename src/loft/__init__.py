"""loft: a computer in the cloud for every user."""

__version__ = "0.1.0"
