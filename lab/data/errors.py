"""The one exception type lab.data raises for user-facing data problems."""

from lab.errors import LabError


class DataError(LabError, ValueError):
    """A dataset cannot be found, built or read; the message says what to do.

    Subclasses ValueError so callers that validate configs with
    ``except ValueError`` also catch unknown dataset names.
    """
