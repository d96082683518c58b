"""Write a file so readers and racing writers only ever see a whole one, and nothing is clobbered by accident.

`fitplan lock` and `fitplan profile init` write files people check in. The text goes to a temporary
file in the target's own directory (same filesystem, so the final step is atomic), is fsync'ed,
and then:

- with `force`: `os.replace` puts it in place (readers see the old file or the new one, never half);
- without: `os.link` gives it the target's name, which fails if the name exists — the check and
  the creation are one system call, so of two racing writers exactly one wins and the other gets
  "exists; use --force" (force=True from Python). Filesystems without hard links fall back to `O_CREAT | O_EXCL`.
"""
from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

from .errors import FileError, ref


def write_atomic(path: str | os.PathLike, text: str, *, force: bool = False) -> Path:
    """Write `text` (UTF-8) to `path` atomically; without `force` an existing file is an `InputError`."""
    path = Path(path)
    if path.is_dir():
        raise FileError(f"{path} is a directory; give a file name", path=str(path))
    if not force and os.path.lexists(path):
        raise FileError(f"{path} exists; use {ref('force', True)} to overwrite", path=str(path))
    directory = path.parent if str(path.parent) else Path(".")
    data = text.encode("utf-8")
    tmp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        _write_new(tmp, data)
        if force:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path, data)
        _fsync_dir(directory)
    except FileNotFoundError:
        raise FileError(f"cannot write {path}: the directory {directory} does not exist", path=str(path)) from None
    except PermissionError:
        raise FileError(f"cannot write {path}: permission denied", path=str(path)) from None
    except IsADirectoryError:
        raise FileError(f"{path} is a directory; give a file name", path=str(path)) from None
    except OSError as err:
        if isinstance(err, FileExistsError):
            raise FileError(f"{path} exists; use {ref('force', True)} to overwrite", path=str(path)) from None
        raise FileError(f"cannot write {path}: {err.strerror or err}", path=str(path)) from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass  # already renamed away; or a left-over hidden temp file, harmless
    return path


def _write_new(tmp: Path, data: bytes) -> None:
    """Create `tmp` (never an existing file: O_EXCL) and write `data` durably."""
    # 0o666 & ~umask, like any file the user creates; mkstemp would make it 0600.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_new(tmp: Path, path: Path, data: bytes) -> None:
    """Give `tmp` the name `path` only if nothing has it; FileExistsError otherwise."""
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        raise
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
    # No hard links here (some FUSE/SMB mounts): exclusive create still refuses to overwrite.
    _write_new(path, data)


def _fsync_dir(directory: Path) -> None:
    """Make the new name itself durable; not every OS/filesystem can open a directory for that."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
