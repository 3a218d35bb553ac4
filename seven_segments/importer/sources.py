"""The inputs of ``seven-segments import``: files (gzip or not) and standard input, and their identity.

A source's *identity* makes the ``command_id`` of each of its lines that gives none:
``<24 hex digits>-<line number>``, the digits a SHA-256 of the identity. The identity of a file is
the SHA-256 of its bytes as stored (so a ``.gz`` file and the same lines uncompressed are two
sources); ``--source-id`` replaces it with the caller's own name, which standard input needs (it
cannot be read twice) and which keeps the ids of a file that was edited since its first import.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import sys
import zlib
from typing import IO, Optional

__all__ = ["Source", "STDIN", "file_identity", "id_prefix", "UnreadableInput"]

STDIN = "-"
_GZIP_MAGIC = b"\x1f\x8b"
_HASH_CHUNK = 1 << 20


def file_identity(path: str) -> str:
    """``sha256:<hex>`` of the file's bytes, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while True:
            chunk = stream.read(_HASH_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def id_prefix(identity: str) -> str:
    """The first part of the ``command_id`` of every line of the source named ``identity``."""
    return hashlib.sha256(b"seven-segments import\0" + identity.encode("utf-8")).hexdigest()[:24]


class UnreadableInput(Exception):
    """Gzip content cut short or damaged: what came before it was read."""


class _CheckedGzip(io.RawIOBase):
    """A gzip stream whose failures are ``UnreadableInput`` (not an ``OSError`` or ``EOFError``,
    which the reader would not tell from the failures of its own files and streams)."""

    def __init__(self, stream: gzip.GzipFile) -> None:
        super().__init__()
        self._gzip = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: "memoryview") -> int:  # type: ignore[override]
        try:
            return self._gzip.readinto(buffer)
        except EOFError:
            raise UnreadableInput("its gzip content is cut short (the file is not whole)") from None
        except (OSError, zlib.error) as error:
            raise UnreadableInput(f"its gzip content is damaged ({error})") from None

    def close(self) -> None:
        self._gzip.close()
        super().close()


class Source:
    """One input, open for reading as a binary stream of lines (``.gz`` content found by its magic)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.is_stdin = name == STDIN
        raw: IO[bytes]
        if self.is_stdin:
            raw = sys.stdin.buffer
            self.size: Optional[int] = None
        else:
            raw = open(name, "rb")  # noqa: SIM115 - closed by close()
            self.size = os.fstat(raw.fileno()).st_size
        self._raw = raw
        peek = getattr(raw, "peek", None)
        head = peek(2)[:2] if peek is not None else b""
        self.gzipped = head == _GZIP_MAGIC
        self.stream: IO[bytes] = raw
        if self.gzipped:
            self.stream = io.BufferedReader(_CheckedGzip(gzip.GzipFile(fileobj=raw, mode="rb")), 1 << 16)

    @property
    def label(self) -> str:
        """How reports name it."""
        return "<stdin>" if self.is_stdin else self.name

    def position(self) -> Optional[int]:
        """Bytes of the stored file read so far (compressed bytes for gzip); None for standard input."""
        if self.is_stdin:
            return None
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        """Close the file (never standard input)."""
        if self.gzipped:
            self.stream.close()
        if not self.is_stdin:
            self._raw.close()
