"""Which files a checkpoint is made of, under which names, and their sha256.

Names and order follow model-signing exactly, because the signed statement has to mean
the same thing to both tools: POSIX paths relative to the checkpoint folder, sorted by
path components (``a/b`` before ``a.b``), a single-file checkpoint named ``.``. Ignored
paths are prefixes by components, anchored at the folder (``.git`` ignores ``.git/**``
but not ``sub/.git``).

Nothing here follows a symbolic link or opens anything but a regular file: a link could
point into another run's folder, and opening a FIFO would hang the verifier.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_IGNORE = (".git", ".gitattributes", ".github", ".gitignore")
"""Upstream's default: version-control files are not part of a model."""
SIGNATURE_NAME = "model.sig"
_CHUNK = 1024 * 1024
"""Large enough that per-call overhead vanishes next to sha256 (~1.5 GB/s a core; 4 MiB
measured no faster), small enough that many threads cost little memory."""
_MAX_THREADS = 32


@dataclass(frozen=True, slots=True)
class Layout:
    """A checkpoint on disk: a folder, or one file."""

    root: Path
    is_file: bool
    signature: Path
    """Where its signature lives: ``model.sig`` inside a folder, ``NAME.sig`` beside a
    file (a shared ``model.sig`` beside files would make two checkpoints in one folder
    overwrite each other's signature)."""

    @property
    def model_name(self) -> str:
        """The informative subject name upstream writes: the final path component."""
        return self.root.name or os.path.basename(os.path.abspath(self.root))

    def signature_ignore(self) -> str | None:
        """The signature's own path relative to the folder, when it lies inside it."""
        if self.is_file:
            return None
        try:  # resolved: ``latest -> step-100`` and ``latest/model.sig`` must match
            rel = self.signature.resolve().relative_to(self.root.resolve())
        except ValueError:
            return None
        return rel.as_posix()


def layout(path: str | os.PathLike[str], signature: str | os.PathLike[str] | None) -> Layout:
    """Decide where the checkpoint and its signature are; ``path`` need not exist (a
    verify of a deleted checkpoint still has to say so)."""
    root = Path(path)
    is_file = not root.is_dir()
    if signature is not None:
        sig = Path(signature)
    elif is_file:
        sig = root.with_name(root.name + ".sig")
    else:
        sig = root / SIGNATURE_NAME
    return Layout(root=root, is_file=is_file, signature=sig)


def sort_key(name: str) -> tuple[str, ...]:
    """Upstream's order: ``PurePosixPath`` comparison, i.e. by components."""
    return tuple(name.split("/"))


@dataclass(slots=True)
class Walk:
    """What a folder holds: regular files to hash, and entries that cannot be hashed."""

    files: dict[str, Path] = field(default_factory=dict)
    odd: dict[str, str] = field(default_factory=dict)
    """name -> why it is not a plain file (``symbolic link``, ``not a regular file``)."""
    unreadable: dict[str, str] = field(default_factory=dict)
    """folder name (``.`` for the top) -> why it could not be listed."""

    def under_unreadable(self, name: str) -> bool:
        parts = sort_key(name)
        return any(u == "." or parts[: len(sort_key(u))] == sort_key(u) for u in self.unreadable)


def _ignored(parts: tuple[str, ...], ignore: Collection[tuple[str, ...]]) -> bool:
    return any(parts[: len(p)] == p for p in ignore)


def walk(lay: Layout, ignore_paths: Iterable[str]) -> Walk:
    """Every file of the checkpoint by name, ignored paths left out."""
    out = Walk()
    if lay.is_file:
        # The path the caller named is followed (``latest.pt -> step-100.pt`` is how
        # people point at checkpoints), as it is for a folder; links inside are not.
        try:
            st = lay.root.stat()
        except FileNotFoundError:
            return out
        if stat.S_ISREG(st.st_mode):
            out.files["."] = Path(os.path.realpath(lay.root))
        else:
            out.odd["."] = "not a regular file"
        return out
    ignore = {tuple(p for p in Path(i).parts if p != ".") for i in ignore_paths}
    ignore.discard(())
    stack: list[tuple[Path, tuple[str, ...]]] = [(lay.root, ())]
    while stack:
        folder, prefix = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            out.unreadable["/".join(prefix) or "."] = str(exc.strerror or exc)
            continue
        for entry in entries:
            parts = (*prefix, entry.name)
            if _ignored(parts, ignore):
                continue
            name = "/".join(parts)
            if entry.is_symlink():
                out.odd[name] = "symbolic link"
            elif entry.is_dir(follow_symlinks=False):
                stack.append((Path(entry.path), parts))
            elif entry.is_file(follow_symlinks=False):
                out.files[name] = Path(entry.path)
            else:
                out.odd[name] = "not a regular file"
    return out


def sha256_file(path: Path) -> tuple[str, int]:
    """(hex digest, size) of one regular file, read once in large chunks.

    ``O_NOFOLLOW``/``O_NONBLOCK`` and the ``fstat`` after opening close the gap between
    the walk and the read: a link or FIFO swapped in meanwhile is refused, not followed.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb", buffering=0, closefd=True) as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file")
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        h = hashlib.sha256()
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        size = 0
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return h.hexdigest(), size


def hash_files(
    files: Mapping[str, Path], *, workers: int | None = None
) -> dict[str, tuple[str, int] | OSError]:
    """Hash many files on parallel threads (hashlib releases the GIL).

    One thread per file up to 32, not one per core: sha256 cannot split a file, so with
    a thread per core the cores idle once the small files are done and the big one is
    still going (a 2:1:1:1 folder on 2 cores takes 3/5 of the bytes' time instead of
    1/2); more threads than cores let the scheduler share every core to the end.
    Biggest first, so the largest shard never starts last. A file that cannot be read
    yields its error, so the caller decides whether that is fatal (sign) or a finding
    (verify)."""

    def one(name: str) -> tuple[str, tuple[str, int] | OSError]:
        try:
            return name, sha256_file(files[name])
        except OSError as exc:
            return name, exc

    def size(name: str) -> int:
        try:
            return files[name].stat().st_size
        except OSError:
            return 0

    order = sorted(files, key=size, reverse=True)
    n = min(len(order), workers or _MAX_THREADS)
    run: Callable[[str], tuple[str, tuple[str, int] | OSError]] = one
    if n <= 1:
        return dict(map(run, order))
    with ThreadPoolExecutor(max_workers=n, thread_name_prefix="trainguard-hash") as pool:
        return dict(pool.map(run, order))


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old file or the new one,
    never half a signature (which would read as tampering)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        with open(fd, "wb", closefd=True) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
