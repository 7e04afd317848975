"""The error of the indexes package, apart so that every module of it can raise it without importing the store."""

__all__ = ["IndexError_"]


class IndexError_(ValueError):
    """An index that cannot be used as asked; the message says why and what to do."""
