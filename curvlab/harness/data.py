"""Where the harness's datasets come from: discovery, checksums, and how to get a missing one.

curvlab never downloads data. A dataset is either *built in* (scikit-learn's
digits, the Python standard library's own source files as a text corpus,
generated synthetic data) or a set of *files* the user installs once:

``fashion-mnist``
    Debian/Ubuntu package ``dataset-fashion-mnist`` (``apt-get install
    dataset-fashion-mnist``, or ``make data``), which installs the four IDX
    files ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
    ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz`` into
    ``/usr/share/datasets/fashion-mnist/``; or the same files in any folder.
``mnist``
    The same four IDX file names (raw or ``.gz``) in a folder of yours.

Search order for a file dataset ``NAME`` (first match wins):

1. ``data_dir`` (``--data-dir DIR``), when given, and then *only* it: its
   subfolder ``DIR/NAME/`` if that holds the files, else ``DIR`` itself;
2. the folder named by the environment variable ``$CURVLAB_DATA`` (same
   rule: ``$CURVLAB_DATA/NAME/``, else ``$CURVLAB_DATA``);
3. the system folders of the dataset (``/usr/share/datasets/fashion-mnist``).

An explicit ``data_dir`` never falls back to another copy: a typo must not
silently train on different data. A missing dataset raises
:class:`DataNotFoundError` (a :class:`FileNotFoundError`), a truncated or
corrupt file :class:`DataCorruptError` (a :class:`ValueError`); both have a
one-line message that names the command that fixes it.

Every file a problem reads is recorded as a :class:`DataFile` with the
SHA-256 of its bytes on disk (what ``sha256sum FILE`` prints), so each run
can store exactly which data it saw. :func:`data_listing` is what
``curvlab data`` prints.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DATASETS",
    "ENV_VAR",
    "DataCorruptError",
    "DataFile",
    "DataNotFoundError",
    "DataSource",
    "DatasetStatus",
    "Location",
    "data_listing",
    "data_source",
    "dataset_status",
    "find_file",
    "fingerprint",
    "locate",
    "sha256_file",
]

ENV_VAR = "CURVLAB_DATA"

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DataNotFoundError(FileNotFoundError):
    """A dataset (or one of its files) is missing; the message says how to get it."""


class DataCorruptError(ValueError):
    """A data file is truncated or not in the expected format; the message names it and the fix."""


@dataclass(frozen=True)
class DataFile:
    """One file a problem read: its path, the SHA-256 of its bytes on disk and its size.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = p.write_bytes(b"abc")
        >>> f = DataFile.of(p)
        >>> f.sha256[:16], f.size
        ('ba7816bf8f01cfea', 3)
    """

    path: str
    sha256: str
    size: int

    @classmethod
    def of(cls, path: str | Path) -> DataFile:
        """Hash the file at ``path`` (streamed; the path is made absolute)."""
        path = Path(path).resolve()
        return cls(str(path), sha256_file(path), path.stat().st_size)

    def as_dict(self) -> dict[str, Any]:
        """``{"path", "sha256", "size"}`` (JSON-ready, for the results store)."""
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of the bytes of ``path`` (read in ``chunk``-byte pieces).

    Raises:
        DataNotFoundError: ``path`` does not exist.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "empty"
        >>> _ = p.write_bytes(b"")
        >>> sha256_file(p)
        'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(chunk), b""):
                digest.update(block)
    except FileNotFoundError as err:
        raise DataNotFoundError(f"data file {str(path)!r} does not exist") from err
    return digest.hexdigest()


def fingerprint(files: tuple[DataFile, ...] | list[DataFile]) -> str:
    """One SHA-256 over the files' names and checksums: equal iff the same bytes were read.

    The SHA-256 of the lines ``basename:sha256`` (one per file, in order,
    joined by newlines); the folder does not enter, so two machines with the
    same files agree.

    Example:
        >>> a = DataFile("/x/train.gz", "00", 1)
        >>> fingerprint([a]) == fingerprint([DataFile("/elsewhere/train.gz", "00", 1)])
        True
    """
    text = "\n".join(f"{Path(f.path).name}:{f.sha256}" for f in files)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class DataSource:
    """How one dataset is found and obtained (see the module docstring).

    Attributes:
        name: Dataset name (``"fashion-mnist"``); also the subfolder name
            searched under ``data_dir`` and ``$CURVLAB_DATA``.
        title: Human-readable description.
        kind: ``"files"`` (found on disk) or ``"builtin"``.
        files: Required file names (each may also be present with ``.gz``).
        system_dirs: Folders searched last (e.g. where a package installs it).
        how_to_get: One line: the command or steps that make it available.
        known_content: Optional ``{file name: SHA-256 of the decompressed
            content}`` of the published release, to recognise it (a
            different copy still loads, but is reported as unrecognised).
    """

    name: str
    title: str
    kind: str
    how_to_get: str
    files: tuple[str, ...] = ()
    system_dirs: tuple[str, ...] = ()
    known_content: Mapping[str, str] | None = None


#: SHA-256 of the *decompressed* Fashion-MNIST IDX files (independent of the
#: gzip compression), as shipped by Debian's ``dataset-fashion-mnist``
#: 0.0~git20200523.55506a9-1 (the upstream release).
FASHION_MNIST_CONTENT = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

_IDX_HINT = "put the IDX files " + ", ".join(f + "[.gz]" for f in IDX_FILES) + " into a folder DIR"

DATASETS: tuple[DataSource, ...] = (
    DataSource(
        "fashion-mnist", "Fashion-MNIST, 60000 + 10000 images 28x28 of 10 clothing classes",
        "files",
        "apt-get install dataset-fashion-mnist (Debian/Ubuntu; or `make data`), or "
        f"{_IDX_HINT} and pass --data-dir DIR (or set {ENV_VAR}=DIR)",
        files=IDX_FILES, system_dirs=("/usr/share/datasets/fashion-mnist",),
        known_content=FASHION_MNIST_CONTENT,
    ),
    DataSource(
        "mnist", "MNIST, 60000 + 10000 handwritten digits 28x28", "files",
        f"{_IDX_HINT} and pass --data-dir DIR (or put them into ${ENV_VAR}/mnist/)",
        files=IDX_FILES,
    ),
    DataSource(
        "stdlib-text", "the Python standard library's own source files as a byte corpus",
        "builtin", "built in (a fixed list of stdlib modules); any text file via --data-dir FILE",
    ),
    DataSource("digits", "scikit-learn's 1797 handwritten digits 8x8", "builtin",
               "built in (ships with scikit-learn)"),
    DataSource("synthetic", "generated from a fixed seed (curves, quadratic, teacher-student)",
               "builtin", "built in (generated)"),
)


def data_source(name: str) -> DataSource:
    """The :class:`DataSource` called ``name``.

    Raises:
        ValueError: unknown name (lists the known ones and a close match).

    Example:
        >>> data_source("fashion-mnist").system_dirs
        ('/usr/share/datasets/fashion-mnist',)
        >>> data_source("fashion")
        Traceback (most recent call last):
        ...
        ValueError: unknown dataset 'fashion' (did you mean 'fashion-mnist'?); known: fashion-mnist, mnist, stdlib-text, digits, synthetic
    """
    names = [s.name for s in DATASETS]
    for source in DATASETS:
        if source.name == name:
            return source
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown dataset {name!r}{hint}; known: {', '.join(names)}")


def find_file(folder: str | Path, name: str) -> Path | None:
    """``folder/name``, else ``folder/name.gz`` (also the ``x.idx3`` spelling); ``None`` if absent.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> _ = (d / "a-idx1-ubyte.gz").write_bytes(b"")
        >>> find_file(d, "a-idx1-ubyte").name, find_file(d, "b")
        ('a-idx1-ubyte.gz', None)
    """
    folder = Path(folder)
    dotted = name.replace("-idx", ".idx")
    for cand in (name, name + ".gz", dotted, dotted + ".gz"):
        if (folder / cand).is_file():
            return folder / cand
    return None


@dataclass(frozen=True)
class Location:
    """Where a file dataset was found.

    Attributes:
        source: The dataset.
        folder: The folder holding its files.
        origin: ``"--data-dir"``, ``"$CURVLAB_DATA"`` or ``"system"``.
        paths: The files, in the order of ``source.files``.
    """

    source: DataSource
    folder: Path
    origin: str
    paths: tuple[Path, ...]


def _candidates(source: DataSource, data_dir: str | Path | None,
                environ: Mapping[str, str]) -> list[tuple[str, Path]]:
    if data_dir is not None:
        roots = [("--data-dir", Path(data_dir))]
    else:
        roots = [(f"${ENV_VAR}", Path(environ[ENV_VAR]))] if environ.get(ENV_VAR) else []
        roots += [("system", Path(d)) for d in source.system_dirs]
    out = []
    for origin, root in roots:
        if origin != "system":
            out.append((origin, root / source.name))
        out.append((origin, root))
    return out


def _looked_in(source: DataSource, data_dir: str | Path | None, environ: Mapping[str, str]) -> str:
    places = [str(p) for _, p in _candidates(source, data_dir, environ)]
    if data_dir is None and not environ.get(ENV_VAR):
        places.insert(0, f"${ENV_VAR} (not set)")
    return ", ".join(places) if places else "nowhere"


def locate(name: str, data_dir: str | Path | None = None, *,
           environ: Mapping[str, str] | None = None) -> Location:
    """Find the files of dataset ``name`` (search order in the module docstring).

    Args:
        name: A dataset of kind ``"files"`` (``"fashion-mnist"``, ``"mnist"``).
        data_dir: Explicit folder (``--data-dir``); when given, only it is searched.
        environ: Environment to read ``$CURVLAB_DATA`` from (default ``os.environ``).

    Returns:
        The :class:`Location`.

    Raises:
        DataNotFoundError: no candidate folder holds all the files; the one-line
            message lists where it looked and how to get the dataset.
        ValueError: unknown or built-in dataset.

    Example:
        >>> import tempfile
        >>> locate("mnist", tempfile.mkdtemp(), environ={})
        Traceback (most recent call last):
        ...
        curvlab.harness.data.DataNotFoundError: mnist not found (looked in ...); to get it: put the IDX files ...
    """
    source = data_source(name)
    if source.kind != "files":
        raise ValueError(f"dataset {name!r} is built in; nothing to locate")
    environ = os.environ if environ is None else environ
    for origin, folder in _candidates(source, data_dir, environ):
        paths = [find_file(folder, f) for f in source.files]
        if all(p is not None for p in paths):
            return Location(source, folder, origin, tuple(p for p in paths if p is not None))
    if data_dir is not None and not Path(data_dir).is_dir():
        where = f"--data-dir {str(data_dir)!r} is not a folder"
    else:
        where = f"looked in {_looked_in(source, data_dir, environ)}"
    raise DataNotFoundError(f"{name} not found ({where}); to get it: {source.how_to_get}")


@dataclass(frozen=True)
class DatasetStatus:
    """One row of :func:`data_listing`.

    Attributes:
        name: Dataset name.
        title: Description.
        found: Whether it is usable now.
        origin: ``"--data-dir"``, ``"$CURVLAB_DATA"``, ``"system"``, ``"built-in"`` or ``""``.
        where: Folder (or description) it was found in; where it was looked for if not.
        files: The files with their checksums (file datasets, when checksummed).
        problems: Registered problems that use it.
        how_to_get: What to do when it is missing.
        note: Extra facts (recognised release, corpus size, a corrupt file, ...).
    """

    name: str
    title: str
    found: bool
    origin: str
    where: str
    files: tuple[DataFile, ...]
    problems: tuple[str, ...]
    how_to_get: str
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``files`` as dicts)."""
        return {"name": self.name, "title": self.title, "found": self.found,
                "origin": self.origin, "where": self.where,
                "files": [f.as_dict() for f in self.files], "problems": list(self.problems),
                "how_to_get": self.how_to_get, "note": self.note}


def _problems_by_dataset() -> dict[str, list[str]]:
    from curvlab.harness.problems import PROBLEMS

    out: dict[str, list[str]] = {}
    for name, cls in sorted(PROBLEMS.load_all().items()):
        out.setdefault(getattr(cls, "dataset", "") or "other", []).append(name)
    return out


def _builtin_status(source: DataSource) -> tuple[bool, str, str, tuple[DataFile, ...]]:
    if source.name == "stdlib-text":
        from curvlab.harness.problems.corpus import stdlib_corpus

        try:
            corpus = stdlib_corpus()
        except (DataNotFoundError, DataCorruptError) as err:
            return False, "", str(err), ()
        return True, corpus.root, (f"{len(corpus.files)} files, {corpus.size} bytes, "
                                   f"sha256 {corpus.sha256[:16]}…"), ()
    if source.name == "digits":
        try:
            import sklearn
        except ImportError:
            return False, "", "scikit-learn is not installed (pip install scikit-learn)", ()
        return True, f"scikit-learn {sklearn.__version__}", "", ()
    return True, "generated", "", ()


def _content_note(source: DataSource, location: Location) -> str:
    if source.known_content is None:
        return ""
    from curvlab.harness.problems.idx import idx_content_sha256

    try:
        same = all(idx_content_sha256(p) == source.known_content.get(stem)
                   for stem, p in zip(source.files, location.paths))
    except DataCorruptError as err:
        return f"corrupt: {err}"
    return "content matches the published release" if same else (
        "content differs from the published release (another copy or another dataset)")


def dataset_status(data_dir: str | Path | None = None, *, environ: Mapping[str, str] | None = None,
                   checksums: bool = True) -> list[DatasetStatus]:
    """The status of every dataset in :data:`DATASETS` (what ``curvlab data`` lists).

    Args:
        data_dir: As for :func:`locate`.
        environ: As for :func:`locate`.
        checksums: Hash the files found (and check their content against
            the known release); ``False`` only locates them.

    Returns:
        One :class:`DatasetStatus` per dataset, in the order of :data:`DATASETS`.

    Example:
        >>> rows = dataset_status(checksums=False)
        >>> [r.name for r in rows][:2], "digitsmlp" in rows[3].problems
        (['fashion-mnist', 'mnist'], True)
    """
    environ = os.environ if environ is None else environ
    problems = _problems_by_dataset()
    rows = []
    for source in DATASETS:
        probs = tuple(problems.get(source.name, ()))
        if source.kind == "builtin":
            found, where, note, files = _builtin_status(source)
            rows.append(DatasetStatus(source.name, source.title, found, "built-in" if found else "",
                                      where, files, probs, source.how_to_get, note))
            continue
        try:
            loc = locate(source.name, data_dir, environ=environ)
        except DataNotFoundError as err:
            rows.append(DatasetStatus(source.name, source.title, False, "", str(err), (), probs,
                                      source.how_to_get))
            continue
        files = tuple(DataFile.of(p) for p in loc.paths) if checksums else ()
        note = _content_note(source, loc) if checksums else ""
        rows.append(DatasetStatus(source.name, source.title, not note.startswith("corrupt"),
                                  loc.origin, str(loc.folder), files, probs, source.how_to_get,
                                  note))
    return rows


def data_listing(data_dir: str | Path | None = None, *, environ: Mapping[str, str] | None = None,
                 checksums: bool = True) -> str:
    """The text ``curvlab data`` prints: each dataset, where it was found or how to get it.

    Args:
        data_dir: As for :func:`locate`.
        environ: As for :func:`locate`.
        checksums: As for :func:`dataset_status`.

    Returns:
        Lines ``NAME  found|MISSING  (origin) where`` followed by indented
        details: files with their SHA-256, the problems using it, or the
        command that gets it.

    Example:
        >>> print(data_listing(checksums=False).splitlines()[-2])
        synthetic      built-in  generated
    """
    out = []
    for row in dataset_status(data_dir, environ=environ, checksums=checksums):
        state = ("built-in" if row.origin == "built-in" else "found") if row.found else "MISSING"
        where = row.where if row.found else ""
        origin = f"({row.origin}) " if row.found and row.origin != "built-in" else ""
        out.append(f"{row.name:<14} {state:<9} {origin}{where}".rstrip())
        if row.found:
            for f in row.files:
                out.append(f"    {Path(f.path).name:<28} {f.size:>10} B  sha256 {f.sha256}")
            if row.note:
                out.append(f"    {row.note}")
        else:
            out.append(f"    {row.note or row.where}")
        out.append(f"    problems: {', '.join(row.problems) if row.problems else '-'}")
    return "\n".join(out)
