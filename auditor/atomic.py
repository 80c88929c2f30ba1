"""Writing an output file safely: whole or not at all, and never through a planted link.

Every report and model the auditor writes goes through `replacing(path)`: the content is written
to a new file with an unpredictable name in the target folder, created with O_EXCL (so a symlink
or file someone placed there in advance is never opened or followed), then renamed over `path`
(a rename replaces a symlink at `path` itself, never the file it points to). A failure leaves
`path` as it was and removes the temporary file.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask sets it, racing other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def temp_beside(path: Path) -> Path:
    """A new empty file beside `path` with an unpredictable name (O_EXCL) and ordinary permissions; the
    caller renames it over `path` (`os.replace`) or removes it. `replacing` does both."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name[:80]}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())
    return Path(name)


@contextmanager
def replacing(path: str | os.PathLike, *, mode: int | None = None) -> Iterator[Path]:
    """Yield a fresh temporary path beside `path` (created empty, O_EXCL, unpredictable name);
    when the block ends without an error it becomes `path`, with `mode` (default 0666 less the
    umask, as an ordinary new file) ."""
    path = Path(path)
    tmp = temp_beside(path)
    try:
        yield tmp
        # always set: a writer may have replaced the temporary file with its own (safetensors' save_file
        # leaves 0600), and an edited model is an ordinary output others collect
        os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise


def write_file(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `path` through `replacing`."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def move_file(src: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Copy `src` (e.g. from a private temporary folder) to `path` through `replacing`."""
    with replacing(path) as tmp, open(src, "rb") as fin, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    return Path(path)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether `a` and `b` are the same existing file (through links, `..`, case-folding mounts)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()
