"""Typed errors for misuse of the channel API (peer input never raises; it is counted)."""

from __future__ import annotations


class CryptoError(Exception):
    """Base class of every error raised by :mod:`ratbond.crypto`."""


class ConfigError(CryptoError, ValueError):
    """The channel settings are inconsistent (e.g. ``--aes`` without a secret)."""


class SecretError(CryptoError, ValueError):
    """A secret could not be loaded; the message names the source, never the value."""


class NotConnectedError(CryptoError):
    """``seal`` was called without usable keys (no session yet, expired, or exhausted)."""


class UnknownSessionError(NotConnectedError):
    """``seal`` was called for a session the server does not have (closed or never existed)."""
