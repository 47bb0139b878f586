"""The top-level box layout of an ISO BMFF file (MP4, MOV, M4V, 3GP), from box headers alone.

Knows: walking the top-level boxes of a local file (8- or 16-byte headers, each box skipped by its
declared size, nothing else read), and from that layout whether the file ends inside a box (it was cut
short: a copy or download that stopped, a recording that was interrupted) and whether it has a 'moov'
box, the index without which FFmpeg cannot play it (recorders write it last, so an interrupted
recording has none). Only files whose first box is 'ftyp' are recognised.
Does not know: what is inside the boxes (sample tables, tracks, fragments), or how to decode anything.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

# A fragmented file has two boxes per fragment; past this many the walk stops (a damaged size field
# could otherwise make it read the whole file 8 bytes at a time).
_MAX_BOXES = 1_000_000


@dataclass(frozen=True)
class Layout:
    """Top-level boxes of a file.

    Attributes:
        types: box types in file order, e.g. ``("ftyp", "moov", "mdat")``.
        size: file size in bytes.
        cut: the type of the box the file ends inside (``""`` inside a box header), ``None`` when the
            last box is complete.
        cut_at: where that box starts (byte offset), ``None`` when nothing is cut.
    """

    types: tuple[str, ...]
    size: int
    cut: str | None = None
    cut_at: int | None = None

    @property
    def has_index(self) -> bool:
        """Whether a complete 'moov' box is present."""
        return "moov" in self.types and self.cut != "moov"


def layout(path: str | os.PathLike[str]) -> Layout | None:
    """The :class:`Layout` of ``path``, or ``None`` when it is not a readable file starting with 'ftyp'."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            types: list[str] = []
            pos = 0
            while pos < size and len(types) < _MAX_BOXES:
                f.seek(pos)
                header = f.read(16)
                if len(header) < 8:
                    return Layout(tuple(types), size, "", pos) if types else None  # a header cut short
                box_size, raw = struct.unpack(">I4s", header[:8])
                kind = raw.decode("latin-1")
                if not types and kind != "ftyp":
                    return None
                if box_size == 1:  # 64-bit size after the type
                    if len(header) < 16:
                        return Layout((*types, kind), size, kind, pos)
                    box_size = struct.unpack(">Q", header[8:16])[0]
                    header_len = 16
                else:
                    header_len = 8
                types.append(kind)
                if box_size == 0:  # "to the end of the file": what a recorder writes before it knows the size
                    return Layout(tuple(types), size)
                if box_size < header_len:  # not a box: stop here, judging only what came before
                    return Layout(tuple(types), size)
                if pos + box_size > size:
                    return Layout(tuple(types), size, kind, pos)
                pos += box_size
            return Layout(tuple(types), size)
    except OSError:
        return None


def open_failure(path: str | os.PathLike[str]) -> str | None:
    """Why FFmpeg could not open or index ``path``, when its box layout shows it; ``None`` when it does not.

    Called only after opening (or finding frames) failed, so a missing index is the reason, not a guess.
    """
    lay = layout(path)
    if lay is None or lay.has_index:
        return None
    if "moov" in lay.types:
        return (
            f"looks like a truncated MP4: the file ends inside its 'moov' index (at {lay.size} bytes), "
            "e.g. an incomplete copy or download"
        )
    where = f"; the file ends inside its '{lay.cut}' box" if lay.cut else ""
    return (
        "looks like a truncated or incomplete MP4: it has an 'ftyp' box but no 'moov' index, which "
        f"recorders write last (e.g. an interrupted recording){where}"
    )


def is_cut(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an ISO BMFF file that ends inside one of its top-level boxes."""
    lay = layout(path)
    return lay is not None and lay.cut is not None
