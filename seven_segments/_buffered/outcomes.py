"""What senders handed back, applied on the pump's thread: delivered, refused, sent again, let go.

An outcome is ``(request number, verdict, error)`` (``sender.Outcome``). Each is applied once: the
batch is taken out of the requests in flight first, and one a close gave up on is skipped. What the
batch's commands became is said to the settlement (counts, ``on_error``) and to the store (settled,
let go); what goes again is put back in line.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Callable, Deque, List, Optional, Sequence, Tuple, Union

from ..clock import Clock
from ..errors import AuthenticationError, InvalidRequest, SevenSegmentsError, ServiceUnavailable
from ..protocol import PATH_BULK
from ..transport import TransientError
from .answers import Verdict
from .batching import Batch
from .lifecycle import Lifecycle
from .line import Line
from .reporting import NO_REASON
from .retry import RetryPolicy
from .sender import Outcome
from .settlement import Settlement
from .store import Store
from .window import Window

__all__ = ["Closing", "Outcomes"]

logger = logging.getLogger("seven_segments")


def _refused_by_the_api(error: SevenSegmentsError) -> bool:
    """The API answered and refused (``error`` in a 200, a 4xx other than a proxy's 407): settled for
    good. Anything else (no answer, a redirect, a bug of ours) is no verdict on the commands."""
    if isinstance(error, (InvalidRequest, AuthenticationError)):
        return True
    return error.status is not None and 400 <= error.status <= 499 and error.status != 407


class Closing:
    """A close: its deadline (infinity until one begins) and timeout; whether it read back what was
    kept (once: an API still down would otherwise get a request per step until the deadline)."""

    __slots__ = ("deadline", "timeout", "read_back")

    def __init__(self) -> None:
        self.deadline = float("inf")
        self.timeout = 0.0
        self.read_back = False


class Outcomes:
    """The outcomes of one engine's requests: queued by senders, applied by the pump."""

    def __init__(
        self,
        line: Line,
        settlement: Settlement,
        store: Store,
        window: Window,
        policy: RetryPolicy,
        lifecycle: Lifecycle,
        clock: Clock,
        scrub: Callable[[str], str],
        closing: Closing,
    ) -> None:
        self._line = line
        self._settlement = settlement
        self._store = store
        self._window = window
        self.policy = policy
        self._lifecycle = lifecycle
        self._clock = clock
        self._scrub = scrub
        self._closing = closing
        #: Finished attempts, applied at the next step (appended from sender threads).
        self.arrived: Deque[Outcome] = deque()
        #: Commands refused alone after a batch they were in was refused as a whole and split (400,
        #: 413), with their reasons and statuses: reported together once no part of a split is left
        #: (a server refusing every request would otherwise make one warning and call per command).
        self._split_refusals: List[Tuple[bytes, str, Optional[int]]] = []
        self.last_trouble = ""  # the last passing failure, for the close's warning
        #: Batches whose request the close deadline cut short: unconfirmed, not failed.
        self.cut_at_close: List[Batch] = []

    def apply(self) -> None:
        """Settle the batches whose requests ended."""
        arrived = self.arrived
        while arrived:
            number, verdict, error = arrived.popleft()
            batch = self._settlement.land(number)
            if batch is None:
                continue  # a close gave up on it and settled it
            if verdict is not None:
                self._settlement.progress.answered(all_refused=bool(verdict.errors) and not verdict.ok and not verdict.retry)
                self._answered(batch, verdict, self._clock())
            else:
                assert error is not None
                self._failed(batch, error)
        if self._split_refusals and not self._splitting():
            self.report_split_refusals()

    def _failed(self, batch: Batch, error: Union[TransientError, SevenSegmentsError]) -> None:
        self._settlement.progress.failed(self._scrub(error.reason if isinstance(error, TransientError) else str(error)))
        if isinstance(error, TransientError):
            self._transient(batch, error, self._clock())
        elif isinstance(error, InvalidRequest) and error.status in (400, 413) and len(batch) > 1:
            # Too large, or malformed as a whole (400: one bad command makes the body bad): halves,
            # until the command at fault is alone and fails by itself.
            for half in batch.halves():
                self._line.insort(half)
        elif isinstance(error, InvalidRequest) and error.status in (400, 413) and batch.split:
            self._store.fail(batch.seqs, batch.payloads, None)
            reason = "; ".join(error.errors) if error.errors else str(error)
            self._split_refusals.extend((payload, reason, error.status) for payload in batch.payloads)
        elif _refused_by_the_api(error):
            self._store.fail(batch.seqs, batch.payloads, error)
        else:  # the host does not resolve, TLS, a proxy, a redirect, a bug: the API never refused them
            self._store.fail_unrefused(batch.seqs, batch.payloads, error)

    def _splitting(self) -> bool:
        """Whether a part of a batch refused as a whole is still to be sent or answered."""
        if any(batch.split for batch in self._line.retries):
            return True
        return self._settlement.any_in_flight(lambda batch: batch.split)

    def report_split_refusals(self) -> None:
        """The commands refused alone after their batches were refused as a whole: one warning, and
        ``on_error`` in chunks giving each command's own reason, per status."""
        refusals, self._split_refusals = self._split_refusals, []
        statuses = sorted({status or 0 for _, _, status in refusals})
        for status in statuses:
            payloads = [payload for payload, _, given in refusals if (given or 0) == status]
            reasons = [reason for _, reason, given in refusals if (given or 0) == status]
            self._settlement.refused_before(
                payloads,
                reasons,
                status,
                f"{PATH_BULK}: refused for good, each alone, after their batch was refused as a whole (HTTP {status})",
            )

    def _answered(self, batch: Batch, verdict: Verdict, now: float) -> None:
        self._window.on_success()
        store, settlement = self._store, self._settlement
        if verdict.progress and store.has_kept:
            store.read_back_kept(self._lifecycle.phase)
        if verdict.all_ok:
            settlement.delivered(len(batch), sum(map(len, batch.payloads)))
            store.settled(batch.seqs)
            return
        ok = verdict.ok
        settlement.delivered(len(ok), sum(len(batch.payloads[i]) for i in ok))
        store.settled([batch.seqs[i] for i in ok])
        if verdict.errors:
            self._refused(batch, verdict.errors)
        if verdict.retry:
            self._retry_results(batch, verdict, now)

    def _retry_results(self, batch: Batch, verdict: Verdict, now: float) -> None:
        plan = self.policy.after_retry_results(batch, now, verdict.progress)
        if plan is None:
            self._let_go(
                [batch.seqs[i] for i in verdict.retry],
                [batch.payloads[i] for i in verdict.retry],
                ServiceUnavailable(f"{PATH_BULK}: the server kept answering 'retry' for the command"),
            )
            return
        attempts, not_before = plan
        self._settlement.retried(len(verdict.retry))
        if not_before > now:
            self._window.gate_until = max(self._window.gate_until, not_before)
        self._line.insort(batch.subset(verdict.retry, attempts, not_before))

    def _transient(self, batch: Batch, error: TransientError, now: float) -> None:
        if now >= self._closing.deadline and error.status is None:  # cut by the close deadline: maybe applied
            self.cut_at_close.append(batch)
            return
        self._window.on_transient(now, error.retry_after)
        again = self.policy.after_transient(batch, now, error.retry_after)
        if again is None:
            reason = error.reason if error.reason.startswith(PATH_BULK) else f"{PATH_BULK}: {error.reason}"
            self._let_go(
                batch.seqs,
                batch.payloads,
                ServiceUnavailable(
                    f"{reason}; gave up after {batch.attempts + 1} attempts in {now - batch.since:.1f} s",
                    status=error.status,
                    errors=error.errors,
                ),
            )
            return
        logger.debug("%s; retrying %d commands in %.3g s", error.reason, len(batch), again - now)
        self.last_trouble = error.reason
        batch.attempts += 1
        batch.not_before = again
        self._window.gate_until = max(self._window.gate_until, again)  # no request at all before then
        self._settlement.retried(len(batch))
        self._line.insort(batch)

    def _let_go(self, seqs: Sequence[int], payloads: Sequence[bytes], error: SevenSegmentsError) -> None:
        """Commands the API did not take within ``retry_deadline`` (down, or answering "retry"): let go
        of (see ``Store.let_go``): those the store keeps stay on disk, safe, since the API has not
        refused them; the others fail for good."""
        lost = self._store.let_go(seqs, payloads, error)
        if len(lost) == len(seqs):
            self._store.fail(seqs, payloads, error)
        elif lost:
            self._store.fail([seqs[i] for i in lost], [payloads[i] for i in lost], error)

    def _refused(self, batch: Batch, refusals: List[Tuple[int, Tuple[str, ...]]]) -> None:
        """The commands of ``batch`` its answer refused for good: failed together, with one warning
        (their count and first reasons), and passed to ``on_error`` in chunks that give each command's
        own reason (``Reporter.refused``)."""
        reasons = [self._scrub("; ".join(given)) if given else NO_REASON for _, given in refusals]
        payloads = [batch.payloads[index] for index, _ in refusals]
        seqs = [batch.seqs[index] for index, _ in refusals]
        self._store.settled(seqs)  # refused for good and reported: not to be replayed
        self._settlement.refused(seqs, payloads, reasons, 200, f"{PATH_BULK}: the server refused them for good")
