"""Read a user's file only when it is a regular file, and never past a size cap.

Every file fitplan reads on someone's word (config.json, profiles, hardware files, locks, cache
entries) goes through `read_capped`: a FIFO, a device, a socket or a directory is refused by its
`stat` before it is opened for reading (a FIFO would block for ever, `/dev/zero` read until memory
runs out); a file over the cap is refused by its size, and the read stops one byte past the cap in
case the file grows between the two. The open is non-blocking, so a FIFO swapped in after the
`stat` cannot block either (the `fstat` of the open file is checked again).
"""
from __future__ import annotations

import os
import stat

from .errors import FileTooLargeError, NotRegularFileError

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def kind_of(mode: int) -> str | None:
    """None for a regular file, else what the path is, in words."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a file")


def not_regular(path: str, kind: str) -> NotRegularFileError:
    return NotRegularFileError(f"{path} is {kind}, not a regular file: pass the path of a file", path=path, kind=kind)


def too_large(path: str, size: int, limit: int, what: str) -> FileTooLargeError:
    cap = f"{limit >> 10} KiB" if limit < 4 << 20 else f"{limit >> 20} MiB"
    return FileTooLargeError(f"{path}: larger than {cap} ({size:,} bytes), too large for {what}; is it the right "
                             "file?", path=path, size=size, limit=limit, what=what)


def check_regular(path: str | os.PathLike) -> os.stat_result:
    """`os.stat(path)` (links followed) when it is a regular file, else `NotRegularFileError`.
    OSErrors of the stat itself (missing, permission) propagate for the caller to word."""
    st = os.stat(path)
    kind = kind_of(st.st_mode)
    if kind is not None:
        raise not_regular(str(path), kind)
    return st


def read_capped(path: str | os.PathLike, *, limit: int, what: str) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them (else `FileTooLargeError`)."""
    st = check_regular(path)
    if st.st_size > limit:
        raise too_large(str(path), st.st_size, limit, what)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        kind = kind_of(os.fstat(fd).st_mode)
        if kind is not None:  # swapped for a FIFO or a device after the stat
            raise not_regular(str(path), kind)
        chunks, got = [], 0
        while got <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    finally:
        os.close(fd)
    if got > limit:
        raise too_large(str(path), got, limit, what)
    return b"".join(chunks)
