"""Exceptions of the training API; the ``lit-ppool`` command turns a :class:`ConfigError` into a one-line error."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """An invalid configuration (unknown name, bad value, missing data or weights), detected before training."""
