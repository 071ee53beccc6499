"""Writing a user's output whole: a temporary sibling renamed into place, with the user's umask.

An output (an export folder, a report page) is written beside its target under a hidden name that says
who owns it: ``.{target}.{kind}-{host}-{pid}-{random}``. A process killed before the rename leaves it
behind; the next one of the same kind for the same target removes those whose process (on this host) is
gone, and leaves a live one alone. ``tempfile`` makes folders 0700 and files 0600; the final output gets
the modes any other file would (0777 or 0666 less the umask), so another user or a container can read it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from factory.errors import ConfigError

log = logging.getLogger(__name__)


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (else set and restored)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def user_modes(path: Path) -> None:
    """Give ``path`` (a file, or a folder and what is in it) the modes a plain create would have."""
    mask = current_umask()
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            os.chmod(root, 0o777 & ~mask)
            for name in files:
                os.chmod(os.path.join(root, name), 0o666 & ~mask)
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o777 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def ensure_folder(folder: Path, flag: str) -> None:
    """``folder`` and its parents exist, or a ConfigError naming ``flag`` and the path in the way."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        why = (
            f"{blocker} is a file, not a folder"
            if blocker
            else f"{exc.strerror or exc}: {exc.filename or folder}"
        )
        raise ConfigError(f"{flag} {folder}: cannot make the folder ({why}); give another path") from None


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _owner_pattern(target: Path, kind: str) -> re.Pattern[str]:
    return re.compile(re.escape(f".{target.name}.{kind}-") + r"(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-.+")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_stale(target: Path, kind: str) -> list[Path]:
    """Remove temporaries of ``kind`` for ``target`` left by processes of this host that are gone. A
    previous output set aside (``...-old``) by a process killed before it could move the new one in is
    moved back to ``target`` instead, when ``target`` is missing."""
    pattern, host, removed = _owner_pattern(target, kind), _host(), []
    with contextlib.suppress(OSError):
        for p in sorted(target.parent.iterdir(), key=lambda p: not p.name.endswith("-old")):
            m = pattern.fullmatch(p.name)
            if not m or m["host"] != host or int(m["pid"]) == os.getpid() or _alive(int(m["pid"])):
                continue
            if p.name.endswith("-old") and not os.path.lexists(target):
                os.replace(p, target)
                log.warning("moved %s back to %s: the process replacing it was killed", p, target)
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        log.info("removed %d temporary output(s) of killed %s(s) beside %s", len(removed), kind, target)
    return removed


def temp_beside(target: Path, kind: str, flag: str, *, folder: bool) -> Path:
    """A new temporary folder (or empty file) beside ``target``, owned by this process."""
    ensure_folder(target.parent, flag)
    sweep_stale(target, kind)
    prefix = f".{target.name}.{kind}-{_host()}-{os.getpid()}-"
    try:
        if folder:
            return Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
        fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
        os.close(fd)
        return Path(name)
    except OSError as exc:
        raise ConfigError(
            f"{flag} {target}: cannot write in {target.parent} ({exc.strerror or exc}); make it writable or "
            "give another path"
        ) from None
