"""Row chunks of a feature matrix that may live on disk.

The head algebra reads its features only through :class:`FeatureChunks`:
every pass over the data (statistics, probabilities, gradients,
Hessian-vector products, scores) is a sum over chunks of rows, each chunk
upcast to float64 on its own and moved to the compute device one at a time.
An in-memory array small enough is one chunk, which the callers may keep
(cache) between passes; a ``numpy.memmap`` or any other array-like (an
``h5py``/``zarr`` dataset, a torch tensor) is read chunk by chunk, so nothing
of size ``n × d`` is ever held in float64.
"""

import ctypes
import ctypes.util
import numbers

import numpy as np
import torch

from ..utils._memmap import page_releaser

# Rows per chunk for chunked sources: about 128 k float64 values (1 MiB). A
# chunk this small stays in the CPU's L2 cache through the cast, the centring
# and both matrix products of a pass; with 16 MiB chunks every product read
# it back from main memory, and a Hessian-vector product over a float32
# memmap took 2.3x longer per row (d = 512, k = 10, one thread).
_CHUNK_ELEMS = 2**17
# An in-memory array whose float64 copy stays below this many values
# (1 GiB) is one chunk; larger ones are chunked like a memmap.
_ONE_CHUNK_ELEMS = 2**27


def _is_array_like(F):
    return hasattr(F, "shape") and hasattr(F, "__getitem__") and hasattr(F, "__len__")


class FeatureChunks:
    """Rows of a 2-D feature array, read in chunks and upcast to float64.

    Parameters
    ----------
    F : array-like of shape (n_samples, n_features)
        An ndarray, a ``numpy.memmap``, a torch tensor or any object with
        ``shape``, ``len`` and row slicing (``F[i:j]``, and ``F[indices]`` with
        sorted indices when ``rows`` is given). Never modified.
    rows : ndarray of int, optional
        Sorted indices of the rows to use (a cross-fitting fold); all rows
        when omitted.
    chunk_size : int or "auto", default="auto"
        Rows per chunk. ``"auto"``: an in-memory ndarray (or CPU tensor)
        whose float64 copy takes at most 1 GiB is one chunk; anything else is
        read in chunks of about 1 MiB of float64.
    device : str or torch.device, default="cpu"
        Device the chunks are moved to (one at a time).

    Attributes
    ----------
    n : int
        Number of rows used.
    d : int
        Number of features.
    single : bool
        Whether all rows form one in-memory chunk (callers may cache it).
    passes : int
        How many times the rows were iterated over (started passes); callers
        may reset it.
    """

    def __init__(self, F, rows=None, *, chunk_size="auto", device="cpu"):
        self.F = F
        self._chunk_arg = chunk_size
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.device = torch.device(device)
        n_all, d = int(F.shape[0]), int(F.shape[1])
        self.n = n_all if self.rows is None else len(self.rows)
        self.d = d
        in_memory = (isinstance(F, np.ndarray) and not isinstance(F, np.memmap)) or (
            isinstance(F, torch.Tensor) and F.device.type == "cpu")
        if isinstance(chunk_size, str):
            if chunk_size != "auto":
                raise ValueError(f"chunk_size must be 'auto' or an int >= 1, got {chunk_size!r}.")
            if in_memory and self.n * max(d, 1) <= _ONE_CHUNK_ELEMS:
                self.chunk_size = max(self.n, 1)
            else:
                self.chunk_size = max(1, _CHUNK_ELEMS // max(d, 1))
        elif isinstance(chunk_size, numbers.Integral) and not isinstance(chunk_size, bool) \
                and chunk_size >= 1:
            self.chunk_size = int(chunk_size)
        else:
            raise ValueError(f"chunk_size must be 'auto' or an int >= 1, got {chunk_size!r}.")
        self.single = in_memory and self.chunk_size >= self.n
        self._release = page_releaser(F)
        self.passes = 0

    def subset(self, rows):
        """The same source restricted to ``rows`` (sorted positions in this object's rows)."""
        rows = np.asarray(rows, dtype=np.int64)
        absolute = rows if self.rows is None else self.rows[rows]
        return FeatureChunks(self.F, absolute, chunk_size=self._chunk_arg,
                             device=self.device)

    def _read(self, s, e, since=None):
        """Rows ``s:e`` as a new float64 tensor; file pages from row ``since`` on are released."""
        F = self.F
        if self.rows is None:
            raw, lo, hi = F[s:e], s, e
        else:
            idx = self.rows[s:e]
            raw, lo, hi = F[idx], int(idx[0]), int(idx[-1]) + 1
        if since is not None:
            lo = min(lo, since)
        if isinstance(raw, torch.Tensor):
            t = raw.to(device=self.device, dtype=torch.float64, copy=True)
        else:
            raw = np.asarray(raw)
            if raw.dtype.kind not in "fiub":
                raise TypeError(f"features must be numeric, got dtype {raw.dtype}.")
            if self.device.type == "cpu":
                # Cast straight into a new float64 buffer: no float32 copy of
                # the chunk on the way, and numpy reads a read-only file
                # mapping that torch would refuse to wrap.
                t = torch.empty(raw.shape, dtype=torch.float64)
                t.numpy()[...] = raw
            else:
                # Move the narrow dtype, widen on the device.
                t = torch.from_numpy(np.array(raw)).to(self.device).to(torch.float64)
        if self._release is not None:
            self._release(lo, hi)
        return t

    def __iter__(self):
        """Yield ``(positions, chunk)``: row positions and a new float64 tensor.

        Each chunk is a fresh copy that the caller owns (and may modify in
        place): the source is never written to.
        """
        self.passes += 1
        since = None
        for s in range(0, self.n, self.chunk_size):
            e = min(s + self.chunk_size, self.n)
            # Release the previous chunk's rows again: reading this chunk
            # faults in whole windows of file pages (the kernel's
            # fault-around, 64 KiB), which remaps the previous chunk's last
            # pages when chunks do not start on a window boundary, as with
            # the rows of a cross-fitting fold. Left mapped, they stayed
            # resident: 12 MB for the folds of 200k rows at d = 512, growing
            # with n.
            yield slice(s, e), self._read(s, e, since)
            since = s if self.rows is None else int(self.rows[s])

    def count_nonfinite(self):
        """Number of NaN or infinite entries, counted chunk by chunk."""
        bad = 0
        for _, X in self:
            bad += int((~torch.isfinite(X)).sum())
        return bad


def as_feature_source(F, name):
    """Check that ``F`` is a 2-D non-empty array-like without converting a memmap.

    Returns the array-like itself when it can be read by rows (ndarray,
    memmap, tensor, h5py/zarr-like), else ``numpy.asarray(F)``.
    """
    if isinstance(F, FeatureChunks):
        return F
    # pandas objects index columns with F[indices]: read them as arrays
    if hasattr(F, "iloc") or not (isinstance(F, (np.ndarray, torch.Tensor))
                                  or _is_array_like(F)):
        F = np.asarray(F)
    shape = tuple(F.shape)
    if len(shape) != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got {shape}.")
    if shape[0] == 0:
        raise ValueError(f"{name} is empty.")
    return F


def block_rows(d):
    """Rows of ``d`` float64 columns in one cache-sized block (``_CHUNK_ELEMS``)."""
    return max(1, _CHUNK_ELEMS // max(int(d), 1))


def _load_malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None  # not glibc (musl, macOS, Windows): nothing to trim
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def trim_heap():
    """Hand memory that ``free`` kept back to the operating system (glibc only).

    glibc serves allocations below its (adaptive, up to 32 MiB) mmap
    threshold from the heap and keeps freed heap pages mapped; between the
    passes of a long run (fit, solve, one fold after another) the freed
    chunk and probability buffers then stayed in the resident memory of the
    process. ``malloc_trim(0)`` returns every whole free page; it frees
    nothing that is in use, so calling it is always safe, and it is a no-op
    where the C library has no such function.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
