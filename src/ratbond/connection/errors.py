"""Typed errors for misuse of a connection by its shell (peer input never raises)."""

from __future__ import annotations


class ConnectionUsageError(Exception):
    """The shell called a connection in a way its contract does not allow."""


class UnknownPathError(ConnectionUsageError, KeyError):
    """``remove_path`` for a path id that was never added or was removed already."""


class PathExistsError(ConnectionUsageError):
    """``add_path`` for a path id that exists already."""
