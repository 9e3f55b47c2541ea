"""The one exception family of pocketrec.

Caller mistakes (bad options, bad arguments) raise the built-in `ValueError`; failures of
data, bundles, runtimes and sync raise a `PocketrecError` subclass. Each message says what
was expected, what came, and what to do.
"""

from __future__ import annotations


class PocketrecError(Exception):
    """Base class of every runtime failure raised by pocketrec."""


class DataError(PocketrecError, ValueError):
    """Input data that cannot be used as given (missing file, wrong columns, bad ids)."""


class BundleError(PocketrecError):
    """A bundle that is missing, corrupt, or does not match its manifest."""


class CompressionError(PocketrecError):
    """A model that cannot be compressed as asked, or a conversion that failed."""


class ConversionError(PocketrecError):
    """A model that the TFLite converter could not convert as asked."""


class HistoryStoreError(PocketrecError):
    """The on-device history store cannot be read or written (corrupt, locked, closed)."""


class AcceleratorError(PocketrecError):
    """An accelerator that was asked for is absent here, or must not run the bundle."""
