"""Reading and writing IDX files (the MNIST format), raw or gzip-compressed.

Layout: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16,
0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions ``k``,
then ``k`` big-endian uint32 sizes, then the data in big-endian C order.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

__all__ = ["read_idx", "write_idx"]

_CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` is decompressed) into a native-endian array.

    Raises:
        ValueError: bad magic number, unknown type code or truncated data
            (the message names the file).

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "a.idx")
        >>> write_idx(p, np.arange(6, dtype=np.uint8).reshape(2, 3))
        >>> read_idx(p).tolist()
        [[0, 1, 2], [3, 4, 5]]
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _CODES:
        raise ValueError(f"{path}: not an IDX file (magic bytes {raw[:4]!r})")
    dtype, ndim = np.dtype(_CODES[raw[2]]), raw[3]
    head = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(raw[4:head], dtype=">u4"))
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - head < count * dtype.itemsize:
        raise ValueError(f"{path}: truncated IDX data, expected {count} values of shape {shape}")
    data = np.frombuffer(raw[head:], dtype=dtype, count=count).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


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
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(payload)
