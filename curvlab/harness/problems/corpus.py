"""Byte corpora for the language-model problem: the Python standard library's own source, or a text file.

The built-in corpus is the concatenation, in the order of
:data:`STDLIB_FILES`, of the bytes of 32 pure-Python modules of the standard
library of the running interpreter (``sysconfig.get_paths()["stdlib"]``).
The list was chosen so that every file exists, as a plain module (not a
package that replaced it, like ``pathlib`` in 3.13 or ``zipfile`` in 3.12,
and not a shim, like ``datetime`` in 3.12), in CPython 3.10 to 3.13; none
is scheduled for removal. It is about 1.5 MB of Python source (1.55 MB on
3.11). The *contents* differ between Python versions, so the corpus's
SHA-256 (and the interpreter version) are recorded with every run: two runs
trained on the same bytes iff their corpus checksums agree. A missing file
is an error (:class:`~curvlab.harness.data.DataNotFoundError` naming it),
never a silent substitute.

Any other text: ``text_corpus(path)`` with a file, or a folder whose
``*.txt`` files are concatenated in sorted name order.
"""

from __future__ import annotations

import hashlib
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curvlab.harness.data import DataFile, DataNotFoundError

__all__ = ["STDLIB_FILES", "Corpus", "load_corpus", "stdlib_corpus", "text_corpus"]

#: The modules of the built-in corpus, relative to the stdlib folder, in reading order.
STDLIB_FILES: tuple[str, ...] = (
    "argparse.py", "ast.py", "calendar.py", "collections/__init__.py", "configparser.py",
    "contextlib.py", "copy.py", "csv.py", "dataclasses.py", "difflib.py", "enum.py",
    "fractions.py", "functools.py", "heapq.py", "inspect.py", "json/decoder.py",
    "json/encoder.py", "logging/__init__.py", "pprint.py", "queue.py", "random.py", "shlex.py",
    "shutil.py", "statistics.py", "string.py", "subprocess.py", "tarfile.py", "textwrap.py",
    "threading.py", "tokenize.py", "typing.py", "uuid.py",
)


@dataclass(frozen=True)
class Corpus:
    """A byte corpus and where it came from.

    Attributes:
        data: The bytes (files concatenated in order).
        files: The files read, with their SHA-256.
        root: Folder the file names are relative to.
        origin: ``"stdlib"`` or ``"text"``.
        sha256: SHA-256 of :attr:`data`.
    """

    data: bytes
    files: tuple[DataFile, ...]
    root: str
    origin: str
    sha256: str

    @property
    def size(self) -> int:
        """Number of bytes."""
        return len(self.data)

    def meta(self) -> dict[str, Any]:
        """JSON-ready description (origin, root, relative file names, bytes, SHA-256, Python)."""
        root = Path(self.root)
        names = [str(Path(f.path).relative_to(root)) if Path(f.path).is_relative_to(root)
                 else f.path for f in self.files]
        return {"origin": self.origin, "root": self.root, "files": names, "bytes": self.size,
                "sha256": self.sha256, "python": platform.python_version()}


def _corpus(paths: list[Path], root: Path, origin: str) -> Corpus:
    data, files = [], []
    for path in paths:
        raw = path.read_bytes()
        data.append(raw)
        files.append(DataFile(str(path.resolve()), hashlib.sha256(raw).hexdigest(), len(raw)))
    blob = b"".join(data)
    return Corpus(blob, tuple(files), str(root), origin, hashlib.sha256(blob).hexdigest())


def stdlib_corpus(files: tuple[str, ...] = STDLIB_FILES, root: str | Path | None = None) -> Corpus:
    """The built-in corpus: ``files`` of the stdlib folder ``root`` (default: this interpreter's).

    Raises:
        DataNotFoundError: a file is missing (names every missing file).

    Example:
        >>> c = stdlib_corpus()
        >>> c.origin, len(c.files), c.size > 1_000_000
        ('stdlib', 32, True)
    """
    base = Path(sysconfig.get_paths()["stdlib"] if root is None else root)
    paths = [base / f for f in files]
    missing = [f for f, p in zip(files, paths) if not p.is_file()]
    if missing:
        raise DataNotFoundError(
            f"the built-in text corpus needs the standard-library files {', '.join(missing)} "
            f"under {str(base)!r}, which this Python lacks; pass --data-dir FILE to train "
            "on a text file of yours instead")
    return _corpus(paths, base, "stdlib")


def text_corpus(path: str | Path) -> Corpus:
    """A text file, or the ``*.txt`` files of a folder (sorted by name), as bytes.

    Raises:
        DataNotFoundError: ``path`` does not exist, or the folder has no ``*.txt`` file.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "b.txt").write_bytes(b"world"); _ = (d / "a.txt").write_bytes(b"hello ")
        >>> text_corpus(d).data
        b'hello world'
    """
    path = Path(path)
    if path.is_file():
        return _corpus([path], path.parent, "text")
    if path.is_dir():
        paths = sorted(p for p in path.glob("*.txt") if p.is_file())
        if paths:
            return _corpus(paths, path, "text")
        raise DataNotFoundError(f"--data-dir {str(path)!r} has no *.txt file; pass a text file "
                                "or a folder of *.txt files (or omit it for the built-in corpus)")
    raise DataNotFoundError(f"--data-dir {str(path)!r} does not exist; pass a text file or a "
                            "folder of *.txt files (or omit it for the built-in corpus)")


def load_corpus(data_dir: str | Path | None) -> Corpus:
    """:func:`stdlib_corpus` when ``data_dir`` is ``None``, else :func:`text_corpus` of it.

    Example:
        >>> load_corpus(None).origin
        'stdlib'
    """
    return stdlib_corpus() if data_dir is None else text_corpus(data_dir)
