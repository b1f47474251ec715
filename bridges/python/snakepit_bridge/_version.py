"""The bridge's version: in ``hello`` (``bridge``) and on its spans."""

__version__ = "0.1.0"
