"""Error types harken raises on bad input.

Every error that reaches a user names the file (and, where it applies, the clip or row) and the
problem, so that a failed run on a thousand recordings says which one to look at.  The CLI
catches :class:`HarkenError` and prints its message without a traceback.
"""

from __future__ import annotations

from pathlib import Path


class HarkenError(Exception):
    """Base class of every error harken raises deliberately."""

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        super().__init__(f"{path}: {message}" if path is not None else message)


class ClipNameError(HarkenError, ValueError):
    """A file name fits none of the known DCASE / MIMII naming patterns."""


class DatasetError(HarkenError):
    """The on-disk dataset layout is wrong: empty machine folder, bad attributes CSV, duplicates."""


class AudioError(HarkenError):
    """An audio file cannot be read or holds audio harken refuses (empty, truncated, NaN...)."""


class ConfigError(HarkenError, ValueError):
    """A configuration file or override is invalid."""


class ScoreFileError(HarkenError, ValueError):
    """A score, decision or ground-truth CSV is malformed or does not match its clip list."""


class CheckpointError(HarkenError):
    """A checkpoint is missing, tampered with, or was not written by harken."""


class CacheError(HarkenError):
    """A feature-cache entry is corrupt; callers rebuild it."""


class HarkenWarning(UserWarning):
    """Input harken accepts but a user should look at (silent or clipped audio, CSV gaps).

    A warning, not an error, where the data is still usable as it stands; the message names
    the file, like every error here.
    """
