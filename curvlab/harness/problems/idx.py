"""Reading and writing IDX files (the MNIST format), raw or gzip-compressed.

Layout: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16,
0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions ``k``,
then ``k`` big-endian uint32 sizes, then exactly ``prod(sizes)`` values in
big-endian C order. A file whose name ends in ``.gz`` is gzip-decompressed.

Caching: :func:`read_idx_cached` is a :func:`functools.lru_cache` (16
entries) on a pure function of ``(path, sha256 of the file)``: a process
decodes each file once, a file changed on disk has a new checksum and is
read again, and the cached arrays are read-only so no caller can alter
another's data. :func:`load_idx` hashes the file and goes through it.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from curvlab.harness.data import DataCorruptError, DataFile, DataNotFoundError

__all__ = ["idx_content_sha256", "load_idx", "parse_idx", "read_idx", "read_idx_cached", "write_idx"]

_CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _payload(path: Path, raw: bytes) -> bytes:
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise DataCorruptError(f"{path}: corrupt or truncated gzip data ({err})") from err


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode the (decompressed) bytes of an IDX file into a native-endian array.

    Raises:
        DataCorruptError: bad magic number, unknown type code, truncated data
            or trailing bytes (the message names ``name``).

    Example:
        >>> parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9])).tolist()
        [7, 9]
        >>> parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 9]), "x.idx")
        Traceback (most recent call last):
        ...
        curvlab.harness.data.DataCorruptError: x.idx: truncated IDX data, expected 3 values of shape (3,) (3 bytes), got 2 bytes
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _CODES:
        raise DataCorruptError(f"{name}: not an IDX file (magic bytes {data[:4]!r})")
    dtype, ndim = np.dtype(_CODES[data[2]]), data[3]
    head = 4 + 4 * ndim
    if len(data) < head:
        raise DataCorruptError(f"{name}: truncated IDX header ({len(data)} bytes, expected {head})")
    shape = tuple(int(s) for s in np.frombuffer(data[4:head], dtype=">u4"))
    count = int(np.prod(shape)) if shape else 1
    need, have = count * dtype.itemsize, len(data) - head
    if have < need:
        raise DataCorruptError(f"{name}: truncated IDX data, expected {count} values of shape "
                               f"{shape} ({need} bytes), got {have} bytes")
    if have > need:
        raise DataCorruptError(f"{name}: {have - need} unexpected bytes after the IDX data "
                               f"of shape {shape}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=head).reshape(shape).astype(
        dtype.newbyteorder("="))


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as err:
        raise DataNotFoundError(f"IDX file {str(path)!r} does not exist") from err


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` is decompressed) into a native-endian array.

    Raises:
        DataNotFoundError: the file does not exist.
        DataCorruptError: not an IDX file, corrupt gzip data, truncated data
            (a :class:`ValueError`; the message names the file).

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "a.idx")
        >>> write_idx(p, np.arange(6, dtype=np.uint8).reshape(2, 3))
        >>> read_idx(p).tolist()
        [[0, 1, 2], [3, 4, 5]]
    """
    path = Path(path)
    return parse_idx(_payload(path, _read_bytes(path)), str(path))


@functools.lru_cache(maxsize=16)
def read_idx_cached(path: str, sha256: str) -> np.ndarray:
    """:func:`read_idx` of ``path`` whose bytes hash to ``sha256``, decoded once per process.

    The result is read-only (``flags.writeable`` is ``False``); copy it to
    modify it. The cache key is the pair ``(path, sha256)``.

    Raises:
        DataCorruptError: the file's checksum is not ``sha256`` (it changed
            since it was hashed), or as :func:`read_idx`.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "a.idx")
        >>> write_idx(p, np.arange(3, dtype=np.uint8))
        >>> f = DataFile.of(p)
        >>> a = read_idx_cached(f.path, f.sha256)
        >>> a is read_idx_cached(f.path, f.sha256), a.flags.writeable
        (True, False)
    """
    file = Path(path)
    raw = _read_bytes(file)
    got = hashlib.sha256(raw).hexdigest()
    if got != sha256:
        raise DataCorruptError(f"{path}: SHA-256 is {got}, expected {sha256} (the file changed)")
    array = parse_idx(_payload(file, raw), path)
    array.flags.writeable = False
    return array


def load_idx(path: str | Path) -> tuple[np.ndarray, DataFile]:
    """Read ``path`` through the process cache and return the array with its :class:`DataFile`.

    Raises:
        DataNotFoundError, DataCorruptError: as :func:`read_idx`.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "a.idx.gz")
        >>> write_idx(p, np.ones(4, dtype=np.int16))
        >>> a, f = load_idx(p)
        >>> a.tolist(), f.size == os.path.getsize(p)
        ([1, 1, 1, 1], True)
    """
    file = DataFile.of(path)
    return read_idx_cached(file.path, file.sha256), file


def idx_content_sha256(path: str | Path) -> str:
    """SHA-256 of the decompressed bytes of ``path`` (equal for a raw file and its ``.gz``).

    Raises:
        DataNotFoundError, DataCorruptError: missing file, corrupt gzip data.

    Example:
        >>> import tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> a = np.arange(5, dtype=np.uint8)
        >>> write_idx(os.path.join(d, "a"), a); write_idx(os.path.join(d, "a.gz"), a)
        >>> idx_content_sha256(os.path.join(d, "a")) == idx_content_sha256(os.path.join(d, "a.gz"))
        True
    """
    path = Path(path)
    return hashlib.sha256(_payload(path, _read_bytes(path))).hexdigest()


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``).

    Raises:
        ValueError: the dtype has no IDX type code.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "a.idx.gz")
        >>> write_idx(p, np.ones((2, 2), dtype=np.float32))
        >>> read_idx(p).dtype
        dtype('float32')
    """
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    match = [(c, n) for c, n in _CODES.items() if np.dtype(n).newbyteorder("=") == native]
    if not match:
        raise ValueError(f"dtype {array.dtype} has no IDX type code; allowed: {sorted(_CODES.values())}")
    code, name = match[0]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(np.dtype(name)).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)  # reproducible bytes
    path.write_bytes(payload)
