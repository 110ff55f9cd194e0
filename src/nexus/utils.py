"""Small shared helpers: atomic writes (files, directories) and content hashing.

Everything written here gets the permissions a plain ``open()``/``mkdir()`` would give: the
process umask applied to 0666 (files) / 0777 (directories), or the mode of the file being
replaced; ``tempfile.mkstemp``/``mkdtemp`` alone would leave 0600/0700, unreadable to a
teammate sharing a release or a cache.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------- permissions


def current_umask() -> int:
    """The process umask, read without changing it (Linux); else set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode ``mkdir``/``open`` give a new directory/file under the current umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def make_temp_dir(parent: str | Path, prefix: str) -> Path:
    """``tempfile.mkdtemp`` in ``parent``, with the umask's mode instead of 0700 (it is renamed
    into place as a shared artifact)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(path, default_mode(directory=True))
    return path


def apply_umask(root: str | Path) -> None:
    """Give everything under ``root`` the umask's mode (an executable file stays executable):
    some writers create files 0600 (transformers 5's ``save_pretrained`` writes
    ``model.safetensors`` through a private temp file), which would make an artifact unreadable
    to the rest of a team."""
    umask = current_umask()
    for dirpath, dirnames, files in os.walk(root):
        for name in dirnames + files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)  # symbolic links are left alone
            if stat.S_ISDIR(st.st_mode):
                os.chmod(path, 0o777 & ~umask)
            elif stat.S_ISREG(st.st_mode):
                os.chmod(path, (0o777 if st.st_mode & 0o111 else 0o666) & ~umask)


# ---------------------------------------------------------------------------- files


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` so that readers see the old file or the new one, never half of either.

    Temp file in the same directory, fsync, then ``os.replace`` (atomic on POSIX). The file keeps
    the mode of the one it replaces, or gets the umask's mode when new.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = default_mode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and directory under ``root``."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


@contextmanager
def dir_lock(path: str | Path, *, shared: bool = False, blocking: bool = True) -> Iterator[bool]:
    """``flock`` on directory ``path`` while inside; yields whether the lock was taken (False when
    non-blocking and held elsewhere, or where the file system has no flock: then nothing is
    locked and callers act as if alone)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        yield False
        return
    try:
        flags = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, flags)
            taken = True
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EBADF, errno.ENOLCK, errno.EINVAL):
                raise
            taken = False
        yield taken
    finally:
        os.close(fd)  # releases the lock


def write_failure(exc: BaseException, where: str | Path | None = None) -> str | None:
    """Why writing files failed ("disk full", the OS message), or None if ``exc`` is no I/O failure.

    safetensors reports the I/O errors of its writer as ``SafetensorError("... I/O error: ...
    (os error 28)")``, not as ``OSError``; ``torch.save``'s zip writer as a ``RuntimeError``
    without the errno ("[enforce fail at inline_container.cc:...] . unexpected pos ...",
    "PytorchStreamWriter failed writing file ..."): for those, the free space left on ``where``'s
    file system is named, since a full disk is their usual cause.
    """
    if isinstance(exc, OSError):
        return "disk full" if exc.errno == errno.ENOSPC else str(exc)
    text = str(exc)
    if type(exc).__name__ == "SafetensorError" and "I/O error" in text:
        return "disk full" if f"os error {errno.ENOSPC})" in text else text
    if isinstance(exc, RuntimeError) and ("PytorchStreamWriter" in text or "inline_container" in text):
        reason = f"the PyTorch writer failed ({text.strip().splitlines()[0][:160]})"
        try:
            free = shutil.disk_usage(where).free if where is not None else None
        except OSError:
            free = None
        return reason + (f"; {free / 2**20:,.0f} MiB free there now: disk full?" if free is not None else "")
    return None


# ---------------------------------------------------------------------------- directories
#
# write_dir_atomically(final, writer) replaces directory ``final`` as one unit:
#
# 1. ``writer`` fills ``.tmp-<name>-XXXX`` (a sibling; flock-ed while being written), which is
#    then fsynced file by file;
# 2. where the kernel and file system can (Linux renameat2 RENAME_EXCHANGE: ext4, xfs, btrfs,
#    tmpfs, ...), the temp dir and ``final`` are swapped in one atomic step; the temp name now
#    holds the old content and is deleted. At no moment is ``final`` missing or partial.
# 3. elsewhere: under a flock on the parent, ``final`` is renamed aside to ``.<name>.old``, the
#    temp dir renamed to ``final``, then the aside renamed to a temp name and deleted. A kill
#    between the two renames leaves ``final`` missing and the complete old copy in the aside:
#    ``recover_dir`` (called by the next write and by readers such as ``resolve_model``) renames
#    it back. A ``.<name>.old`` only ever holds a complete copy; any ``.tmp-<name>-*`` that no
#    live writer locks is garbage and is removed by the next write.

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap directories ``a`` and ``b``; False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def aside_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def _temp_prefix(final: Path) -> str:
    return f".tmp-{final.name}-"


def _discard(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def recover_dir(final: str | Path, *, clean: bool = False) -> Path:
    """Repair what a killed :func:`write_dir_atomically` left next to ``final`` and return the
    directory to read: ``final``, or its complete old copy when that cannot be moved back (a
    reader without write permission). ``clean=True`` also removes abandoned temp dirs."""
    final = Path(final)
    if final.name in ("", ".", ".."):  # "." or "/": nothing is ever written in its place
        return final
    aside = aside_path(final)
    if aside.is_dir():
        with dir_lock(final.parent):
            if aside.is_dir():
                if final.exists():  # killed after the swap: the aside is the old copy
                    trash = final.with_name(f"{_temp_prefix(final)}{uuid.uuid4().hex[:8]}")
                    try:
                        os.rename(aside, trash)
                    except OSError:
                        pass
                    else:
                        _discard(trash)
                else:  # killed between the two renames: put the old copy back
                    try:
                        os.rename(aside, final)
                        fsync_dir(final.parent)
                    except OSError:
                        return aside
    if clean and final.parent.is_dir():
        prefix = _temp_prefix(final)
        for entry in os.scandir(final.parent):
            if entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False):
                with dir_lock(entry.path, blocking=False) as free:
                    if free:  # no live writer holds it
                        _discard(Path(entry.path))
    return final


def write_dir_atomically(
    final: str | Path,
    writer: Callable[[Path], None],
    *,
    what: str = "directory",
    kept: Callable[[], str] | None = None,
) -> None:
    """Write directory ``final`` whole or not at all: ``writer(tmp)`` fills a sibling temp dir,
    which is synced and swapped with ``final`` (see the comment above: readers find the old or
    the new complete directory, whenever the process is killed). An I/O failure (disk full, a
    directory not writable, ...) removes the temp dir and becomes one ``NexusError`` naming
    ``what`` failed and, from ``kept()``, what is intact. The directory gets the mode of the one
    it replaces, or the umask's.
    """
    from nexus.errors import NexusError

    final = Path(final)
    tmp: Path | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        recover_dir(final, clean=True)
        mode = final.stat().st_mode & 0o7777 if final.is_dir() else default_mode(directory=True)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), dir=final.parent))
        with dir_lock(tmp):
            writer(tmp)
            apply_umask(tmp)
            os.chmod(tmp, mode)
            fsync_tree(tmp)
            old = _swap_in(tmp, final)
        fsync_dir(final.parent)
        tmp = None
        if old is not None:
            _discard(old)
    except BaseException as exc:
        if tmp is not None:
            _discard(tmp)
        reason = write_failure(exc, final.parent)
        if reason is None:
            raise
        raise NexusError(f"cannot write {what} {final}: {reason}" + (f"; {kept()}" if kept else "")) from None


def _swap_in(tmp: Path, final: Path) -> Path | None:
    """Put ``tmp`` in place of ``final``; returns the path now holding the old content, if any."""
    if not final.exists():
        os.rename(tmp, final)
        return None
    if _exchange(tmp, final):
        return tmp
    aside = aside_path(final)
    with dir_lock(final.parent):
        os.rename(final, aside)
        fsync_dir(final.parent)
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(aside, final)
            raise
        fsync_dir(final.parent)
        trash = final.with_name(f"{_temp_prefix(final)}{uuid.uuid4().hex[:8]}")
        os.rename(aside, trash)
    return trash


# ---------------------------------------------------------------------------- hashing, imports


def sha256_file(path: str | Path, chunk_size: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def lazy_exports(package: str, names: dict[str, str]) -> Callable[[str], Any]:
    """A PEP 562 module ``__getattr__`` resolving ``names`` (name -> defining module) on first use,
    so importing a package (e.g. for ``nexus --help``) does not import torch or transformers."""
    import importlib

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(names[name]), name)

    return __getattr__
