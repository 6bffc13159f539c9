"""Releasing the pages of a memory-mapped array that a pass has read."""

import mmap

import numpy as np


def page_releaser(F):
    """Return ``release(first_row, stop_row)`` for a shared file mapping, else None.

    Pages of a ``numpy.memmap`` that were read stay mapped, and count in the
    process's resident memory, until the kernel needs them back: a pass over
    a 2 GB feature file would "use" 2 GB. ``MADV_DONTNEED`` unmaps the pages
    of rows already processed; the data stays in the page cache (and in the
    file), so a later read costs a minor fault, not a disk read. Only shared
    mappings qualify: on a copy-on-write (``mode="c"``) memmap it would drop
    the caller's unsaved edits.
    """
    if not isinstance(F, np.memmap) or getattr(F, "mode", None) == "c":
        return None
    mm = getattr(F, "_mmap", None)
    if not isinstance(mm, mmap.mmap) or not hasattr(mm, "madvise") or F.ndim != 2:
        return None
    if F.strides[1] != F.itemsize or F.strides[0] <= 0:
        return None
    try:
        base = np.frombuffer(mm, dtype=np.uint8).__array_interface__["data"][0]
    except (TypeError, ValueError):  # closed or otherwise unusable mapping
        return None
    start = F.__array_interface__["data"][0] - base
    row = F.strides[0]
    page = mmap.PAGESIZE
    size = len(mm)

    def release(first, stop):
        lo = (start + first * row) // page * page
        hi = min(size, -(-(start + stop * row) // page) * page)
        if hi > lo:
            try:
                mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            except (OSError, ValueError):
                pass  # only a memory optimisation

    return release
