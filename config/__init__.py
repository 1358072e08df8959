"""Satchel's configuration: one frozen :class:`Settings` object."""

from config.settings import ConfigError, Settings, StorageBackend

__all__ = ["ConfigError", "Settings", "StorageBackend"]
