"""Errors and warnings raised by the video input stage.

Every failure to read a source becomes a :class:`VideoError` whose message names the source and the
reason, so callers never see a raw torchcodec/decord/PyAV/FFmpeg traceback. Frames that are skipped while
the rest of the source is still readable produce a :class:`VideoDecodeWarning` instead, and a file cut
short (a truncated MP4 whose index comes first) one :class:`VideoTruncatedWarning` saying where its
frames end; a preferred decoder that cannot run here produces one :class:`VideoBackendWarning`.

This module knows nothing about decoding; it only formats messages.
"""

from __future__ import annotations

import os
import re

_DECORD_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ")
# torchcodec prefixes C++ messages with "function, /path/file.cpp:123, "
_TORCHCODEC_PREFIX = re.compile(r"^\w+, \S+\.(?:cpp|cc|h):\d+, ")


class VideoError(ValueError):
    """A source could not be read; ``str(err)`` is ``"video '<source>': <reason>"``.

    Attributes:
        source: the path, URL or folder as given by the caller.
        reason: the human-readable cause, without the source prefix.
    """

    def __init__(self, source: str | os.PathLike[str], reason: str) -> None:
        self.source = os.fspath(source)
        self.reason = reason
        super().__init__(f"video {self.source!r}: {reason}")

    def __reduce__(self):  # keep pickling (e.g. across DataLoader workers) working with two init args
        return (type(self), (self.source, self.reason))


class VideoNotFoundError(VideoError, FileNotFoundError):
    """The path does not exist; also a :class:`FileNotFoundError` so ``except FileNotFoundError`` works."""

    def __init__(self, source: str | os.PathLike[str], reason: str = "file not found") -> None:
        super().__init__(source, reason)


class VideoDecodeWarning(UserWarning):
    """Some frames of a source could not be decoded and were skipped; the others are returned."""


class VideoTruncatedWarning(VideoDecodeWarning):
    """A file was cut short: its header declares more video than its bytes hold; the frames before the
    cut are returned, and the message says where they end."""


class VideoBackendWarning(UserWarning):
    """The preferred decoder (torchcodec) cannot run here; files are decoded with PyAV instead."""


def describe_exception(exc: BaseException) -> str:
    """One-line cause for an exception coming out of PyAV/torchcodec/decord, without their tracebacks."""
    strerror = getattr(exc, "strerror", None)  # av.error.FFmpegError carries FFmpeg's own message here
    if isinstance(strerror, str) and strerror:
        return strerror
    lines = [line for line in str(exc).splitlines() if line.strip()]
    # decord prefixes C++ messages with "[hh:mm:ss] /path/file.cc:123: ", sometimes nested
    line = _DECORD_PREFIX.sub("", lines[0]).strip() if lines else ""
    line = _TORCHCODEC_PREFIX.sub("", line)
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__
