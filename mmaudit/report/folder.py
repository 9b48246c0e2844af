"""Where a report may be written: the output folder and its hidden siblings.

mmaudit never deletes a file it did not write. Every report folder holds a marker
(``.mmaudit-report``) listing the files the run wrote; ``-o`` is replaced only when it
holds nothing else, and only when it (and its parent) can be written, which is checked
before any model runs. One run writes an output at a time: ``WorkLock`` holds an
exclusive ``flock`` on the ``.OUT.work`` resume folder, and each run's staging folder
``.OUT.partial-*`` is locked too, so a new run removes only the stages of dead runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import stat
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

from mmaudit.engine.errors import MmauditError

# Written into every report folder: the files the run wrote, so a later run replaces the
# folder only when it holds nothing else (the user's notes, a project that was given as -o).
MARKER = ".mmaudit-report"


# What a report folder written before the marker existed may hold, besides the figure and
# table paths its report.json names: recognised as mmaudit's without the marker.
_LEGACY_FILES = frozenset(
    {
        "report.json",
        "config.yaml",
        "index.html",
        "summary.md",
        "junit.xml",
        "samples/predictions.parquet",
        "samples/embeddings.npz",
    }
)


def stage_prefix(out: Path) -> str:
    return f".{out.name}.partial-"


def resolve_output(out: str | Path) -> Path:
    """``out`` as an absolute path (symlinks resolved), refused when it names no folder that
    could be replaced: the filesystem root, or an existing file."""
    resolved = Path(out).resolve()
    if resolved.parent == resolved:
        raise MmauditError(f"-o {out}: cannot write a report over {resolved}", hint="name a folder")
    if resolved.exists() and not resolved.is_dir():
        raise MmauditError(
            f"output path exists and is not a folder: {resolved}", hint="choose another -o"
        )
    return resolved


def make_parent(out: Path) -> None:
    """Create ``out``'s parent folder; MmauditError with one line when that is not possible,
    or when nothing in it could be renamed or removed (immutable or append-only: the report
    is staged next to ``out`` and renamed into place at the end)."""
    for above in out.parents:
        if above.exists() and not above.is_dir():
            raise MmauditError(
                f"cannot write the report: {above} is a file, not a folder",
                hint="choose another -o",
            )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = Path(exc.filename) if exc.filename else out.parent
        raise not_writable(where, exc) from exc
    if _inode_flags(out.parent) & (_IMMUTABLE_FLAGS | _APPEND_FLAGS):
        raise MmauditError(
            f"cannot write the report: {out.parent} is immutable or append-only",
            hint="choose another -o, or clear the flag: chattr -i -a",
        )


def not_writable(where: Path, exc: OSError, out: Path | None = None) -> MmauditError:
    """The one line for a folder that refused a write. With ``out`` (the report being
    created) the message names it: a filesystem such as /proc answers mkdir with "No such
    file or directory" about a folder that exists, which read about ``where`` is untrue."""
    why = exc.strerror or type(exc).__name__
    if out is not None:
        return MmauditError(
            f"cannot create {out}: {why} (while creating {exc.filename or where})",
            hint=f"choose another -o, or make {where} writable"
            if isinstance(exc, PermissionError)
            else f"choose another -o; {where} does not take new folders",
        )
    return MmauditError(
        f"cannot write the report: {where}: {why}",
        hint="choose another -o, or make that folder writable",
    )


def owned_files(folder: Path) -> set[str] | None:
    """The files (report-relative, '/'-separated) that mmaudit wrote into the report
    ``folder``: those its marker lists or, for a report written before the marker existed,
    the fixed names and the paths its report.json names. None when ``folder`` is not an
    mmaudit report (no marker, no readable report.json of mmaudit's shape)."""
    marker = folder / MARKER
    if marker.is_file() and not marker.is_symlink():
        try:
            files = json.loads(marker.read_text(encoding="utf-8"))["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
            return None
        return {*files, MARKER}
    legacy = folder / "report.json"
    if not legacy.is_file() or legacy.is_symlink():
        return None
    try:
        raw = json.loads(legacy.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("schema_version"), int)
        or not isinstance(raw.get("tool_version"), str)
        or not isinstance(raw.get("checks"), dict)
    ):
        return None
    owned = set(_LEGACY_FILES)
    for check in raw["checks"].values():
        for key in ("figures", "tables"):
            paths = check.get(key) if isinstance(check, dict) else None
            if isinstance(paths, dict):
                owned |= {v for v in paths.values() if isinstance(v, str)}
    return owned


def foreign_entries(folder: Path, owned: set[str]) -> list[str]:
    """Entries under ``folder`` that are not in ``owned``: files (and symlinks, which
    mmaudit never writes) by path, a folder holding none of ``owned`` as ``name/``."""
    parents = {p.as_posix() for rel in owned for p in Path(rel).parents if p != Path(".")}
    foreign: list[str] = []

    def walk(current: Path, prefix: str) -> None:
        for entry in sorted(os.scandir(current), key=lambda e: e.name):
            rel = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                if rel in parents:
                    walk(Path(entry.path), rel + "/")
                else:
                    foreign.append(rel + "/")
            elif not (entry.is_file(follow_symlinks=False) and rel in owned):
                foreign.append(rel)

    walk(folder, "")
    return foreign


def check_output_folder(out: Path) -> None:
    """MmauditError (one line) unless a report can be written to ``out``, before any work
    is done: an existing ``out`` must be an mmaudit report holding only files mmaudit
    wrote, and it (with everything in it) must be removable: not a mount point, not
    immutable or append-only (``chattr +i`` / ``+a``), writable. A missing ``out`` is
    checked by creating the staging folder next to it."""
    if not out.is_dir():
        if out.exists():
            raise MmauditError(
                f"output path exists and is not a folder: {out}", hint="choose another -o"
            )
        return
    entries = sorted(p.name for p in out.iterdir())  # an empty folder holds nothing to lose
    owned = owned_files(out) if entries else set()
    if owned is None:
        raise MmauditError(
            f"output folder {out} exists and is not an mmaudit report"
            f" (it holds {_some(entries)}); refusing to replace it",
            hint="choose another -o, or empty that folder",
        )
    if foreign := foreign_entries(out, owned):
        raise MmauditError(
            f"output folder {out} holds files mmaudit did not write: {_some(foreign)};"
            " refusing to replace it",
            hint="choose another -o or remove them",
        )
    if os.path.ismount(out):
        raise MmauditError(
            f"output folder {out} is a mount point and cannot be replaced",
            hint="choose a folder inside it as -o",
        )
    problem = _unremovable(out)
    if problem is not None:
        raise MmauditError(
            f"cannot replace the report in {out}: {problem}",
            hint="choose another -o, or make it writable: chattr -i -a, chmod -R u+w",
        )


def _some(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


def _unremovable(out: Path) -> str | None:
    """Why ``out`` and its contents could not be moved aside and deleted, or None: an
    immutable or append-only flag (which stop root too), a folder without write permission,
    or, in a sticky parent such as /tmp, a folder owned by someone else."""
    parent = out.parent
    try:
        pst, ost = os.stat(parent), os.stat(out)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    uid = os.geteuid() if hasattr(os, "geteuid") else None
    if uid not in (None, 0) and pst.st_mode & stat.S_ISVTX and uid not in (ost.st_uid, pst.st_uid):
        return f"{out} belongs to another user in the sticky folder {parent}"
    for path in [out, *sorted(out.rglob("*"))]:
        if path.is_symlink():
            continue
        if _inode_flags(path) & (_IMMUTABLE_FLAGS | _APPEND_FLAGS):
            return f"{path} is immutable or append-only"
        if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
            return f"{path} is not writable"
    return None


# Linux inode flags (FS_IOC_GETFLAGS, as chattr sets them) and their BSD / macOS st_flags
_FS_IMMUTABLE_FL, _FS_APPEND_FL = 0x10, 0x20
_IMMUTABLE_FLAGS = (
    _FS_IMMUTABLE_FL | getattr(stat, "UF_IMMUTABLE", 0) | getattr(stat, "SF_IMMUTABLE", 0)
)


_APPEND_FLAGS = _FS_APPEND_FL | getattr(stat, "UF_APPEND", 0) | getattr(stat, "SF_APPEND", 0)


def _inode_flags(path: Path) -> int:
    """The file's immutable / append-only flags, 0 where they cannot be read (another
    filesystem or platform, no permission); never follows a symlink."""
    try:
        flags = getattr(os.stat(path, follow_symlinks=False), "st_flags", 0)  # BSD / macOS
    except OSError:
        return 0
    if not sys.platform.startswith("linux"):
        return flags
    import fcntl

    get_flags = (2 << 30) | (struct.calcsize("l") << 16) | (ord("f") << 8) | 1  # _IOR('f', 1, long)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return flags
    try:
        raw = fcntl.ioctl(fd, get_flags, bytes(8))
        return flags | struct.unpack_from("i", raw)[0]
    except OSError:
        return flags
    finally:
        os.close(fd)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM are delivered only after the block (on the main thread, where
    their handlers run); elsewhere, or where signals cannot be masked, a plain block."""
    import threading

    masked = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not (
        threading.main_thread()
    ):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, masked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def work_folder(out: Path) -> Path:
    """OUT's resume folder ``.OUT.work`` (a hidden sibling): finished sweep batches wait
    there for a ``--resume``."""
    resolved = Path(out).resolve()
    return resolved.parent / f".{resolved.name}.work"


WORK_OWNER = "owner.json"  # in the work folder: which process holds its lock


class WorkLock:
    """One writer per output folder: an exclusive ``flock`` on OUT's work folder, held from
    before the data is read until the report is in place, so a second run to the same
    ``-o`` (or a ``--resume`` of it) stops at once instead of sharing the sweep files.

    The kernel drops the lock however the process ends. Where locks are not supported (some
    network filesystems) runs are not serialised.
    """

    def __init__(self, out: str | Path) -> None:
        self.out = resolve_output(out)
        self.folder = work_folder(self.out)
        self.created = False  # this run made the folder (no earlier resume state in it)
        self._fd: int | None = None

    def acquire(self) -> WorkLock:
        """Take the lock; MmauditError naming the run that holds it, or a folder of that
        name that is not mmaudit's."""
        make_parent(self.out)
        folder = self.folder
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise MmauditError(
                f"{folder} exists and is not mmaudit's resume folder",
                hint="remove it, or choose another -o",
            )
        for _ in range(20):  # another run may remove the folder between mkdir and open
            try:
                folder.mkdir()
                created = True
            except FileExistsError:
                created = False
            except OSError as exc:
                raise not_writable(folder.parent, exc, out=self.out) from exc
            try:
                fd = os.open(folder, os.O_RDONLY)
            except FileNotFoundError:
                continue
            if _try_flock(fd) is False:
                os.close(fd)
                pid = _owner_pid(folder)
                who = f"another mmaudit run, pid {pid}," if pid else "another mmaudit run"
                raise MmauditError(
                    f"{who} is writing {self.out}",
                    hint="wait for it to end, or choose another -o",
                )
            try:
                current = os.path.samestat(os.fstat(fd), os.stat(folder))
            except OSError:
                current = False
            if current:  # not a folder that the run before removed after we opened it
                break
            os.close(fd)
        else:
            raise MmauditError(f"could not lock {folder}", hint="retry, or choose another -o")
        self._fd, self.created = fd, created
        entries = {p.name for p in folder.iterdir()}
        if entries and not entries & {"meta.json", WORK_OWNER}:
            self.release(keep=True)
            raise MmauditError(
                f"{folder} exists and is not mmaudit's resume folder"
                f" (it holds {_some(sorted(entries))})",
                hint="remove it, or choose another -o",
            )
        owner = folder / WORK_OWNER
        owner.write_text(json.dumps({"pid": os.getpid()}), encoding="utf-8")
        return self

    def release(self, keep: bool) -> None:
        """Drop the lock; remove the folder unless ``keep`` (resume state worth keeping)."""
        if keep:
            with contextlib.suppress(OSError):
                (self.folder / WORK_OWNER).unlink()
        else:
            shutil.rmtree(self.folder, ignore_errors=True)  # still locked while it goes
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _try_flock(fd: int) -> bool | None:
    """True: the exclusive lock is ours; False: another process holds it; None: locks are
    not supported here."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def _owner_pid(folder: Path) -> int | None:
    try:
        pid = json.loads((folder / WORK_OWNER).read_text(encoding="utf-8"))["pid"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if isinstance(pid, int) else None


def lock_folder(folder: Path) -> int | None:
    """An open descriptor holding an exclusive ``flock`` on ``folder`` (the kernel releases
    it however the process ends); None where it cannot be taken (no flock on Windows or
    on some network filesystems, or another process holds it)."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def remove_stale_stages(out: Path) -> list[Path]:
    """Remove the staging folders of ``out`` that no live run holds (the lock can be
    taken): exactly the names ``ReportWriter`` makes (``.{name}.partial-`` and mkdtemp's 8
    characters), never the ``.{name}.work`` resume state. Where locks are unsupported
    nothing is removed. Returns the folders removed."""
    pattern = re.compile(re.escape(stage_prefix(out)) + r"[a-z0-9_]{8}")
    removed = []
    for folder in out.parent.iterdir():
        if not pattern.fullmatch(folder.name) or folder.is_symlink() or not folder.is_dir():
            continue
        fd = lock_folder(folder)
        if fd is None:  # a run writing to the same folder right now, or no locks here
            continue
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)
        removed.append(folder)
    return removed
