"""Every error the library raises for bad input or bad state: one root, one home.

The command line catches :class:`AlexNetError` once, in ``main()``, prints its message as
one ``error: ...`` line and exits non-zero. Anything else that escapes is a bug and keeps
its traceback. Each class below also derives from the built-in exception it replaced
(``ValueError``, ``RuntimeError``), so code written against those still works.

This module imports nothing from the project: every layer may use it.
"""

from __future__ import annotations

import os


class AlexNetError(Exception):
    """Root of the project's errors: the message says what is wrong and, where it can, what to do.

    ``exit_code`` is what the command line exits with: 2 for bad input (the default),
    1 for a run that failed after it started (see :class:`TrainingError`).
    """

    exit_code = 2


class UsageError(AlexNetError):
    """A command-line value that cannot be used (out of range, wrong kind of path)."""


class ConfigError(AlexNetError, ValueError):
    """A configuration that cannot be used; the message names the offending key."""


class DatasetError(AlexNetError, ValueError):
    """A dataset path or layout that cannot be used (message says why)."""


class DatasetExistsError(DatasetError, FileExistsError):
    """An output directory that already holds something a command would overwrite."""


class ShardCorruptError(DatasetError):
    """A prepared-dataset shard whose size, checksum or content does not match the index."""


# Why a file could not be used as an image; a counted skip names one of these.
DECODE_REASONS = ("empty", "too_large", "not_an_image", "truncated", "corrupt", "unreadable")


class DecodeError(AlexNetError):
    """A file that cannot be used as an image. ``reason`` is one of :data:`DECODE_REASONS`."""

    def __init__(self, reason: str, detail: str = "", path: str | os.PathLike | None = None):
        assert reason in DECODE_REASONS, reason
        self.reason, self.detail, self.path = reason, detail, None if path is None else str(path)
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def with_path(self, path: str | os.PathLike) -> DecodeError:
        self.path = str(path)
        return self


class ImageLoadError(AlexNetError, ValueError):
    """A single image file that cannot be used (missing, not an image, truncated, ...)."""


class DownloadError(AlexNetError, RuntimeError):
    """A download, checksum or archive problem (the message says which and what to do)."""


class ChecksumError(DownloadError):
    """The downloaded file's checksum differs from the published one."""


class UnsafeArchiveError(DownloadError):
    """An archive member that would escape the output folder or is not a plain file."""


class CheckpointError(AlexNetError):
    """A checkpoint that cannot be used: missing, truncated, tampered with or unsafe."""


class EvaluationError(AlexNetError, ValueError):
    """Models and data that cannot be evaluated together (mismatched ensemble, no images)."""


class TrainingError(AlexNetError, RuntimeError):
    """Training cannot go on (diverged, checkpoint not writable, nothing to resume); the
    message says what happened and what was kept."""

    exit_code = 1


class ExportError(AlexNetError, RuntimeError):
    """The model could not be exported in the requested format."""


class ReportError(AlexNetError, ValueError):
    """The run directory cannot be reported on (no such directory, no usable model)."""


class IndexFormatError(AlexNetError, ValueError):
    """A feature index directory that is missing, incomplete or inconsistent."""


class ExplorerError(AlexNetError):
    """A request the explorer cannot serve; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message
