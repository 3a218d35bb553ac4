"""Stand-ins shared by the engine's tests."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Tuple


class FakeSpool:
    """Stands in for ``Spool``: records are ``("segment", n)``, each payload remembered for ``reread``."""

    folder = "/fake/spool"
    last_failure = ""

    def __init__(self) -> None:
        self.payloads: Dict[Tuple[str, int], bytes] = {}
        self.confirmed: List[Tuple[str, int]] = []
        self.closed = False

    def append(self, payload: bytes, pid: int = 0) -> Tuple[str, int]:
        record = ("segment", len(self.payloads))
        self.payloads[record] = payload
        return record

    def recover(self, chunk_size: int = 1000) -> Iterator[Any]:
        return iter(())

    def prepare_next(self) -> None:
        pass

    def confirm(self, records: Any) -> None:
        self.confirmed.extend(records)

    def reread(self, by_name: Any, chunk_size: int, lost: Any) -> Iterator[Any]:
        records = [(name, offset) for name, offsets in by_name.items() for offset in offsets]
        for start in range(0, len(records), chunk_size):
            yield [(record, self.payloads[record]) for record in records[start : start + chunk_size]]

    def close(self) -> None:
        self.closed = True

