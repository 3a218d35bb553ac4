"""What an import keeps between runs: its checkpoint, its rejects file and its lock.

For an input ``orders.jsonl`` they are ``orders.jsonl.import-checkpoint.json``,
``orders.jsonl.import-rejects.jsonl`` and ``orders.jsonl.import-lock``, next to it, or in the
``--state`` folder (for standard input, named after ``--source-id``).

The checkpoint says how far the *confirmed prefix* goes: the highest line number such that every
line up to it was delivered or rejected. It is replaced atomically (a new file written, flushed to
the disk, renamed over the old one) and only after the rejects of those lines are on the disk, so a
run killed at any moment leaves a checkpoint that is true. Every file here is opened without
following symbolic links, and created readable by its owner only (they hold customer data).
"""

from __future__ import annotations

import errno
import json
import os
import stat
from typing import IO, Any, Dict, Iterable, Optional

__all__ = ["StateFiles", "Checkpoint", "StateError", "Rejects", "check_folder"]

_VERSION = 1
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class StateError(Exception):
    """A checkpoint or rejects file that cannot be used (a usage error: exit status 2)."""


class Checkpoint:
    """The confirmed prefix of one source, and the counts up to it."""

    def __init__(
        self, identity: str, line: int = 0, delivered: int = 0, rejected: int = 0, blank: int = 0, finished: bool = False
    ) -> None:
        self.identity = identity
        #: Every line up to this one was delivered, rejected or blank.
        self.line = line
        self.delivered = delivered
        self.rejected = rejected
        self.blank = blank
        self.finished = finished

    def as_json(self) -> Dict[str, Any]:
        """What the file holds."""
        return {"version": _VERSION, "identity": self.identity, "confirmed_line": self.line, "delivered": self.delivered,
                "rejected": self.rejected, "blank": self.blank, "finished": self.finished}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "Checkpoint":
        """The checkpoint a file holds; ``StateError`` when it holds none."""
        try:
            if data["version"] != _VERSION:
                raise StateError(f"{where} is a checkpoint of another version ({data['version']!r})")
            line, delivered, rejected, blank = (data[key] for key in ("confirmed_line", "delivered", "rejected", "blank"))
            if not isinstance(data["identity"], str) or any(
                type(n) is not int or n < 0 for n in (line, delivered, rejected, blank)
            ):
                raise ValueError("bad field")
            return cls(data["identity"], line, delivered, rejected, blank, finished=data["finished"] is True)
        except (KeyError, TypeError, ValueError):
            raise StateError(f"{where} is not a checkpoint of seven-segments import; move it away or use --restart") from None


def _open(path: str, flags: int, mode: int = 0o600) -> int:
    try:
        return os.open(path, flags | _NOFOLLOW | _CLOEXEC, mode)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise StateError(f"{path} is a symbolic link; an import's state files are never followed") from None
        raise


def check_folder(folder: str) -> None:
    """``StateError`` unless only this user can make or replace files in ``folder``: in a folder
    others can write to (``/tmp``), they could plant a checkpoint that skips lines, or a rejects
    file they read."""
    info = os.stat(folder or ".")
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != os.geteuid() or mode & 0o022:
        who = "another user" if info.st_uid != os.geteuid() else "others" if mode & 0o002 else "its group"
        raise StateError(
            f"the state of an import is not kept in {os.path.abspath(folder or '.')}: {who} can make files in it (a checkpoint that "
            "skips lines, a rejects file they read); give --state DIR, a folder only you can write to"
        )


def _fsync_folder(folder: str) -> None:
    try:
        handle = os.open(folder or ".", os.O_RDONLY | _CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _kept(entry: bytes, line: int) -> bool:
    """Whether a rejects file's ``entry`` is whole and of a line up to ``line``."""
    try:
        return bool(json.loads(entry)["line"] <= line)
    except (ValueError, KeyError, TypeError):
        return False


def _replace(path: str, content: Iterable[bytes]) -> None:
    """Replace ``path`` by a file holding the pieces of ``content``, atomically and on the disk (a new
    file written, flushed, renamed over it)."""
    temporary = path + ".tmp"
    try:
        os.unlink(temporary)
    except FileNotFoundError:
        pass
    handle = _open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    with os.fdopen(handle, "wb") as stream:
        for piece in content:
            stream.write(piece)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)
    _fsync_folder(os.path.dirname(path))


class Rejects:
    """The rejects file of one source: one JSON object a line, appended, flushed before each checkpoint."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stream: Optional[IO[bytes]] = None

    def keep_up_to(self, line: int) -> int:
        """Drop the entries of lines after ``line`` (a previous run wrote them ahead of its checkpoint:
        this run writes them again), and a last entry cut short by a kill; how many entries remain."""
        try:
            handle = _open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return 0
        with os.fdopen(handle, "rb") as stream:  # one entry at a time: the file may be of any size
            entries = kept = 0
            for entry in stream:
                entries += 1
                kept += _kept(entry, line)
            if kept != entries:
                stream.seek(0)
                _replace(self.path, (entry.rstrip(b"\n") + b"\n" for entry in stream if _kept(entry, line)))
        return kept

    def clear(self) -> None:
        """Start empty (a first run, or ``--restart``): no file until a line is rejected."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def write(self, entry: Dict[str, Any]) -> None:
        """Append one reject (not yet on the disk: see ``sync``)."""
        if self._stream is None:
            self._stream = os.fdopen(_open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab")
        self._stream.write(json.dumps(entry).encode("ascii") + b"\n")

    def sync(self) -> None:
        """Put what was written on the disk."""
        if self._stream is not None:
            self._stream.flush()
            os.fsync(self._stream.fileno())

    def close(self) -> None:
        """Flush and close."""
        if self._stream is not None:
            self.sync()
            self._stream.close()
            self._stream = None


class StateFiles:
    """Where one source's checkpoint, rejects and lock live."""

    def __init__(self, base: str) -> None:
        self.checkpoint_path = base + ".import-checkpoint.json"
        self.rejects = Rejects(base + ".import-rejects.jsonl")
        self._lock_path = base + ".import-lock"
        self._lock_handle: Optional[int] = None

    def lock(self) -> None:
        """Hold the source's lock for this process's life; ``StateError`` when another import holds it
        or when the folder is not this user's alone (``check_folder``)."""
        import fcntl

        check_folder(os.path.dirname(self._lock_path))
        handle = _open(self._lock_path, os.O_WRONLY | os.O_CREAT)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(handle)
            raise StateError(f"another import of this input is running (it holds {self._lock_path})") from None
        self._lock_handle = handle

    def unlock(self) -> None:
        """Let the lock go (the file stays: removing it would race with another import taking it)."""
        if self._lock_handle is not None:
            os.close(self._lock_handle)
            self._lock_handle = None

    def load(self) -> Optional[Checkpoint]:
        """The checkpoint, or None when there is none."""
        try:
            handle = _open(self.checkpoint_path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        with os.fdopen(handle, "rb") as stream:
            text = stream.read()
        try:
            data = json.loads(text)
        except ValueError:
            raise StateError(f"{self.checkpoint_path} is not a checkpoint of seven-segments import; "
                             "move it away or use --restart") from None
        return Checkpoint.from_json(data, self.checkpoint_path)

    def save(self, checkpoint: Checkpoint) -> None:
        """Replace the checkpoint atomically, the rejects it counts on the disk first."""
        self.rejects.sync()
        _replace(self.checkpoint_path, [json.dumps(checkpoint.as_json()).encode() + b"\n"])

    def remove(self) -> None:
        """Forget the checkpoint (``--restart``)."""
        try:
            os.unlink(self.checkpoint_path)
        except FileNotFoundError:
            pass
