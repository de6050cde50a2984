"""User-facing errors.

Every error a user can cause (bad data, bad checkpoint, bad config, bad input file) is raised as a
subclass of :class:`TvtError` with a message that says *what* is wrong, *where* (file, class, key)
and *what to do*. The CLI prints the message and exits with status 2 instead of a traceback.
"""


class TvtError(Exception):
    """Base class of every error caused by user input."""


class ConfigError(TvtError):
    """A config file or override is invalid (unknown key, wrong type, bad value)."""


class DataError(TvtError):
    """A dataset layout, split file, image file or feature file is invalid."""


class CheckpointError(TvtError):
    """A checkpoint file is missing, corrupt, of an unknown format or of the wrong model."""


class InputError(TvtError):
    """A query or other input given on the command line / API is invalid."""
