"""The reading loop of an import: each line after the checkpoint parsed, checked by the client and queued.

This is the loop whose speed the ``--dry-run`` bound is about, so it keeps to local names and looks
at the queue, the progress and the stop conditions (``look``) once every ``LOOK_BYTES`` read only.
"""

from __future__ import annotations

import functools
from typing import IO, Any, Callable, Iterable, Optional

from .confirm import Mark, Rejected
from .formats import MAX_LINE, CsvRows, LineError, parse_json_line
from .sources import UnreadableInput

__all__ = ["LineQueuer", "ShortInput", "InputBroken", "MAX_LINE", "LOOK_BYTES", "skip_lines"]

#: Bytes of input between two looks at the queue, the progress and the stop conditions (about a
#: thousand small events; a few large ones, so that large lines never pile up between two looks).
LOOK_BYTES = 256 << 10


class InputBroken(Exception):
    """The input could not be read past ``mark`` (``reason``: why)."""

    def __init__(self, mark: Mark, error: UnreadableInput) -> None:
        super().__init__(mark, error)
        self.mark = mark
        self.reason = str(error)


class ShortInput(Exception):
    """The input has fewer lines than its checkpoint confirms (``lines``: how many it has)."""

    def __init__(self, lines: int) -> None:
        super().__init__(lines)
        self.lines = lines


def skip_lines(stream: IO[bytes], count: int) -> int:
    """Read past ``count`` lines (each in pieces of bounded size); how many there were."""
    skipped = 0
    while skipped < count:
        piece = stream.readline(MAX_LINE)
        if not piece:
            break
        if piece.endswith(b"\n"):
            skipped += 1
        elif len(piece) < MAX_LINE:  # the last line, without a newline
            return skipped + 1
    return skipped


class LineQueuer:
    """Queues one input's commands through ``client`` (a buffered client, or a disabled one for a dry run).

    ``own_id(line, command_id)`` is told of each line that names its own ``command_id`` before it is
    queued; ``reject(line, reason, details)`` of each line refused; ``look(mark, size)`` is called
    every ``LOOK_BYTES`` with the bytes read so far (False: stop reading); ``too_many(rejected)`` after each rejected line (True: stop).
    """

    def __init__(
        self,
        client: Any,
        own_id: Optional[Callable[[int, str], None]],
        reject: Rejected,
        look: Callable[[Mark, int], bool],
        too_many: Callable[[int], bool],
    ) -> None:
        self._client = client
        self._own_id = own_id
        self._reject = reject
        self._look = look
        self._too_many = too_many

    def json_lines(self, stream: IO[bytes], start: int, prefix: str) -> Mark:
        """Read, check and queue the lines after line ``start``; the mark after the last one read."""
        if start:
            skipped = skip_lines(stream, start)
            if skipped < start:
                raise ShortInput(skipped)
        # Read at most MAX_LINE bytes at a time, so that a line of any length takes bounded memory.
        lines: Iterable[bytes] = iter(functools.partial(stream.readline, MAX_LINE), b"")
        track, update = self._client.track, self._client.update
        own, reject, look, too_many = self._own_id, self._reject, self._look, self._too_many
        parse = parse_json_line
        id_start = prefix + "-"
        accepted = rejected = blank = size = 0
        next_look = LOOK_BYTES
        number = start
        try:
            for raw in lines:
                number += 1
                size += len(raw)
                try:
                    event_type, properties, customer, timestamp, command_id = parse(raw)
                    if command_id is None:
                        command_id = id_start + str(number)
                    elif own is not None:
                        own(number, command_id)
                    if event_type is None:
                        update(properties, customer=customer, timestamp=timestamp, command_id=command_id)
                    else:
                        track(event_type, properties, customer=customer, timestamp=timestamp, command_id=command_id)
                    accepted += 1
                except (TypeError, ValueError) as error:
                    if not raw.strip():
                        blank += 1
                    else:
                        rejected += 1
                        reason = str(error)
                        if len(raw) == MAX_LINE and not raw.endswith(b"\n"):
                            skip_lines(stream, 1)  # the rest of the line
                            reason = f"the line is longer than {MAX_LINE} bytes: no command is that large"
                            raw = raw[:1000] + b"..."
                        reject(number, reason, {"text": raw.decode("utf-8", "replace").rstrip("\r\n")})
                        if too_many(rejected):
                            break
                if size >= next_look:
                    next_look = size + LOOK_BYTES
                    if not look(Mark(number, accepted, rejected, blank), size):
                        break
        except UnreadableInput as error:
            raise InputBroken(Mark(number, accepted, rejected, blank), error) from None
        return Mark(number, accepted, rejected, blank)

    def csv_rows(self, rows: CsvRows, start: int, prefix: str) -> Mark:
        """As ``json_lines``, for CSV rows (row 1 is the header: never skipped, never counted)."""
        client = self._client
        accepted = rejected = blank = size = 0
        next_look = LOOK_BYTES
        number = max(start, 1)
        try:
            for number, call, cells in rows:
                if number <= start:
                    continue
                size += sum(map(len, cells.values()))
                if call is None:
                    blank += 1
                else:
                    try:
                        if isinstance(call, LineError):
                            raise call
                        event_type, properties, customer, timestamp, command_id = call
                        if command_id is None:
                            command_id = f"{prefix}-{number}"
                        elif self._own_id is not None:
                            self._own_id(number, command_id)
                        if event_type is None:
                            client.update(properties, customer=customer, timestamp=timestamp, command_id=command_id)
                        else:
                            client.track(event_type, properties, customer=customer, timestamp=timestamp,
                                         command_id=command_id)
                        accepted += 1
                    except (TypeError, ValueError) as error:
                        rejected += 1
                        self._reject(number, str(error), {"row": cells})
                        if self._too_many(rejected):
                            break
                if size >= next_look:
                    next_look = size + LOOK_BYTES
                    if not self._look(Mark(number, accepted, rejected, blank), size):
                        break
        except UnreadableInput as error:
            raise InputBroken(Mark(number, accepted, rejected, blank), error) from None
        if number < start:
            raise ShortInput(number)
        return Mark(number, accepted, rejected, blank)
