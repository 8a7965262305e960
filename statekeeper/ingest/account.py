"""One account's ingest: stream sessions, sequence checks, resyncs, REST backfills, polling and reconnects.

:meth:`AccountIngest.run` runs until the daemon stops (or the venue refuses the credentials). Its life:

1. *Recover*: sessions the log still shows open for this account were left by a daemon that died (this daemon
   holds the account's claim): each is closed with reason ``abandoned``. The ledgers' marks (the latest fill,
   funding payment, transfer and bust known) are read back from the log.
2. *Stream* (``mode = "stream"``): one stream session after another. Each session appends ``session_opened``,
   every frame in arrival order (the handshake's too), and ``session_closed`` with the reason; its row in
   ``stream_sessions`` follows. Alongside the frames, a *resync* runs over REST: seed snapshots when the stream
   has none (Paradex), then backfill the ledgers from the marks taken when the session opened, skipping ids the
   log already has. On a contiguous stream (Extended) the first gap, repeat or reorder is recorded
   (``gap_detected``) and the session ends with reason ``gap``; the next one resyncs.
3. *Reconnect* with capped exponential backoff and jitter, reset once a session stayed up ``healthy_after``
   seconds. After ``fallback_after_failures`` failures in a row the account is also served by *REST polling*
   (a ``rest_poll`` session, snapshots with source ``rest``) until a stream session opens again.
4. *Poll* (``mode = "rest"``): one polling session for the daemon's life.
5. *Resolve*, beside the sessions in both modes: the orders a snapshot stopped listing (``closed_unconfirmed`` in
   ``orders``) are fetched by id and their final states appended (:mod:`statekeeper.ingest.resolve`).

A session ends by closing the connection and reading what the venue sent until its close frame, so no frame
already sent is left unread. A :class:`FatalVenueError` (HTTP 401/403, a refused token) ends the account with
one clear error; the other accounts go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal
from uuid import UUID, uuid4

import asyncpg
import orjson

from statekeeper import statements
from statekeeper.config import IngestSettings
from statekeeper.errors import InvalidEvent
from statekeeper.eventlog import CONNECTION_ERRORS
from statekeeper.events import (
    CloseReason,
    Event,
    LedgerMark,
    OrderBody,
    PositionBody,
    RejectedFrame,
    Source,
    Transport,
    encode_event,
    parse_body,
)
from statekeeper.ingest import records
from statekeeper.ingest.backoff import Backoff
from statekeeper.ingest.drivers import AccountStream, VenueDriver
from statekeeper.ingest.ledgers import Ledgers, later
from statekeeper.ingest.metrics import IngestMetrics
from statekeeper.ingest.records import Origin
from statekeeper.ingest.resolve import OrderResolver
from statekeeper.ingest.sequence import ContiguousSequence
from statekeeper.ingest.writer import AccountWriter, SessionClose, SessionOpen, WriterStopped
from statekeeper.logs import log_context
from statekeeper.venues.base import FrameContext, FrameRejection, SequenceKind
from statekeeper.venues.errors import FatalVenueError, VenueError
from statekeeper.venues.ws import Frame

logger = logging.getLogger(__name__)

RECOVERY_SCAN = 500
"""Latest events of each ledger kind read back at start, to resume backfills and skip known ids."""


class AccountState(StrEnum):
    STARTING = "starting"
    CONNECTING = "connecting"
    STREAMING = "streaming"
    POLLING = "polling"
    WAITING = "waiting"
    """Between stream sessions (backoff), or waiting for the database to take the backlog."""
    FATAL = "fatal"
    STOPPED = "stopped"


STATES = tuple(s.value for s in AccountState)


class _Stop(Exception):
    """Internal: the daemon is stopping."""


@dataclass
class _Session:
    """A stream session being read: its sequence, and the latest ledger items it delivered while intact."""

    origin: Origin
    checker: ContiguousSequence | None = None
    latest: dict[str, LedgerMark] = field(default_factory=dict)
    resynced: bool = False


class AccountIngest:
    """Ingests one account. Create one per configured account; :meth:`run` it in the daemon's task group."""

    def __init__(
        self,
        *,
        account: str,
        mode: Literal["stream", "rest"],
        driver: VenueDriver,
        writer: AccountWriter,
        pool: asyncpg.Pool,
        options: IngestSettings,
        owner: str,
        stop: asyncio.Event,
        metrics: IngestMetrics | None = None,
    ) -> None:
        self.account = account
        self.mode = mode
        self.driver = driver
        self.writer = writer
        self.pool = pool
        self.options = options
        self.owner = owner
        """The daemon (``host:pid``) recorded as the owner of this account's sessions."""
        self.stop = stop
        self.metrics = metrics
        self.venue = driver.venue
        self.ledgers = Ledgers()
        # The hot path's counter, looked up once rather than per frame.
        self._frames_received = metrics.frames_received.labels(account, driver.venue) if metrics else None
        self.state = AccountState.STARTING
        self.session: UUID | None = None
        """The current stream (or polling) session."""
        self.error: str | None = None
        """Why the account stopped (fatal), or the last connection error."""
        self.fallback = False
        self._poll_fetches = 0
        self._backoff = Backoff(
            initial=options.reconnect_initial_seconds,
            maximum=options.reconnect_max_seconds,
            healthy_after=options.healthy_after_seconds,
        )
        self._fatal: FatalVenueError | None = None
        """A refused credential met beside the sessions (by the resolver): the sessions end with reason fatal."""
        self.resolver = OrderResolver(
            account=account,
            source=driver,
            origin=lambda: Origin(self.account, self.venue, self.session),
            submit=self._submit_event,
            interval=options.resolve_interval_seconds,
            metrics=metrics,
            rest_failed=self._rest_failed,
        )
        self._set_state(AccountState.STARTING)

    # ------------------------------------------------------------------------------------------- helpers

    def _set_state(self, state: AccountState) -> None:
        self.state = state
        if self.metrics is not None:
            self.metrics.set_state(self.account, state.value, STATES)

    def _origin(self, session: UUID) -> Origin:
        return Origin(self.account, self.venue, session)

    def _submit_event(self, event: Event) -> None:
        try:
            self.writer.submit(encode_event(event))
        except InvalidEvent as exc:
            self.writer.submit(_as_rejected(event, str(exc)))

    async def _wait_stop(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless the daemon stops first; True if it is stopping."""
        if self.stop.is_set():
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), max(0.0, seconds))
        return self.stop.is_set()

    # ---------------------------------------------------------------------------------------------- run

    async def run(self) -> None:
        with log_context(account=self.account):
            try:
                await self._recover()
                if self.mode == "rest":
                    await self._beside_resolver(self._poll_session("connect", until=None))
                else:
                    await self._beside_resolver(self._stream_forever())
            except _Stop:
                pass
            except FatalVenueError as exc:
                self.error = str(exc)
                self._set_state(AccountState.FATAL)
                logger.error(  # noqa: TRY400 - one clear line: the venue refused the credential, no traceback
                    "account %s stopped: %s. The other accounts go on; fix the credential and restart.",
                    self.account,
                    exc,
                    extra={"action": "account_fatal", "venue": self.venue},
                )
                return
            finally:
                await self.driver.close()
            self._set_state(AccountState.STOPPED)

    async def _beside_resolver(self, sessions: Coroutine[Any, Any, None]) -> None:
        """Run the account's sessions with the order resolver beside them, for as long as the sessions run.

        The resolver returns only once the daemon stops; if it fails (a refused credential, or a bug), the sessions
        are ended (closed with reason ``fatal`` for a refused credential) and its error is raised.
        """
        main = asyncio.create_task(sessions, name=f"sessions-{self.account}")
        resolver = asyncio.create_task(self.resolver.run(self.pool, self.stop), name=f"resolve-{self.account}")
        try:
            await asyncio.wait({main, resolver}, return_when=asyncio.FIRST_COMPLETED)
            if not main.done():
                failure = resolver.exception()
                if failure is not None:
                    if isinstance(failure, FatalVenueError):
                        self._fatal = failure
                    main.cancel()
                    await asyncio.wait({main})
                    raise failure
            await main
        finally:
            for task in (resolver, main):
                task.cancel()
            await asyncio.gather(resolver, main, return_exceptions=True)

    # ------------------------------------------------------------------------------------------ recovery

    async def _recover(self) -> None:
        """Close the sessions a dead daemon left open, and read back where the ledgers are complete."""
        retry = Backoff(initial=0.2, maximum=5.0)
        while True:
            try:
                async with self.pool.acquire() as conn:
                    stale = await conn.fetch(statements.OPEN_SESSIONS, self.account)
                    last_seqs = [await conn.fetchval(statements.LAST_SEQ_OF_SESSION, self.account, row["session"])
                                 for row in stale]  # fmt: skip
                    marks = await conn.fetchval(statements.LATEST_MARKS, self.account)
                    latest = {what: await conn.fetch(statements.LATEST_OF_KIND, self.account, kind, RECOVERY_SCAN)
                              for what, kind in _LEDGER_KINDS.items()}  # fmt: skip
                    positions = await conn.fetch(statements.LATEST_OF_KIND, self.account, "position", 50)
                break
            except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
                logger.warning("cannot read the account's state from the log yet (%s); retrying", exc,
                               extra={"action": "recover_retry"})  # fmt: skip
                if await self._wait_stop(retry.next_delay()):
                    raise _Stop from None
        for what, rows in latest.items():
            ledger = self.ledgers[what]
            for row in reversed(rows):
                found = records.ledger_records(what, parse_body(row["payload"]))
                for record in found:
                    mark = ledger.note(record)
                    if marks is None:  # a log written before marks were recorded: trust what it holds
                        ledger.advance(mark)
                self.ledgers.note_markets(found)
        if marks is not None:
            self.ledgers.restore({what: LedgerMark.model_validate(mark) for what, mark in marks.items()})
        for row in positions:
            self.ledgers.note_markets(getattr(parse_body(row["payload"]), "positions", ()))
        # Closed once the marks are back, so their session_closed carries the marks too.
        for row, last_seq in zip(stale, last_seqs, strict=True):
            session = row["session"]
            detail = f"left open by {row['owner'] or 'a daemon'} that stopped without closing it"
            logger.warning("session %s was left open; closing it as abandoned", session,
                           extra={"action": "session_abandoned", "session": str(session)})  # fmt: skip
            self._close_session(self._origin(session), CloseReason.ABANDONED, detail, last_seq)

    # ----------------------------------------------------------------------------------------- sessions

    def _open_session(self, origin: Origin, transport: Transport, url: str, reason: str) -> None:
        assert origin.session is not None
        self.writer.submit(SessionOpen(account=self.account, session=origin.session, venue=self.venue,
                                       transport=transport.value, url=url, owner=self.owner,
                                       opened_at=datetime.now(UTC)))  # fmt: skip
        self._submit_event(records.session_opened(origin, transport=transport, url=url, reason=reason))

    def _close_session(self, origin: Origin, reason: CloseReason, detail: str | None, last_seq: int | None) -> None:
        assert origin.session is not None
        detail = detail[:500] if detail else None
        self._submit_event(records.session_closed(origin, reason=reason, detail=detail, last_seq=last_seq,
                                                  marks=self.ledgers.marks()))  # fmt: skip
        self.writer.submit(SessionClose(account=self.account, session=origin.session, closed_at=datetime.now(UTC),
                                        reason=reason.value, detail=detail, last_seq=last_seq))  # fmt: skip

    # ------------------------------------------------------------------------------------------- stream

    async def _stream_forever(self) -> None:  # noqa: PLR0912, PLR0915 - one loop, read top to bottom
        failures = 0
        poller: asyncio.Task[None] | None = None
        stream_back = asyncio.Event()
        previous: tuple[UUID, CloseReason] | None = None
        scheduled = (
            asyncio.create_task(self._scheduled(), name=f"scheduled-{self.account}")
            if self.driver.scheduled_ledgers
            else None
        )
        try:
            while not self.stop.is_set():
                if scheduled is not None and scheduled.done():
                    scheduled.result()  # a refused credential ends the account; anything else is a bug: loudly
                if self.writer.full:
                    # The database is behind: let the backlog drain before a new session adds a snapshot to it.
                    self._set_state(AccountState.WAITING)
                    await self._until_stop(self.writer.drained_below(max(1, self.writer.bound // 2)))
                    continue
                if poller is None:  # while polling stands in, the account reads as polling
                    self._set_state(AccountState.CONNECTING)
                if previous is not None and self.metrics is not None:
                    self.metrics.reconnects.labels(self.account).inc()
                stream_back.clear()
                try:
                    outcome = await self._stream_session(previous, on_open=stream_back.set)
                except FatalVenueError:
                    raise
                except VenueError as exc:
                    failures += 1
                    self.error = str(exc)
                    if self.metrics is not None:
                        self.metrics.connect_failures.labels(self.account).inc()
                    logger.warning("cannot open the %s stream (failure %d in a row): %s", self.venue, failures, exc,
                                   extra={"action": "connect_failed"})  # fmt: skip
                else:
                    previous = outcome
                    if self._backoff.disconnected(time.monotonic()):
                        failures = 0
                    elif outcome[1] in (CloseReason.ERROR, CloseReason.SERVER_CLOSE):
                        # Only a connection that broke early says the stream cannot be kept up; a session this
                        # daemon ended itself (a gap to resync, a full buffer) says nothing of the kind.
                        failures += 1
                    if outcome[1] is CloseReason.SHUTDOWN:
                        return
                if poller is not None and stream_back.is_set():
                    await poller
                    poller = None
                if failures >= self.options.fallback_after_failures and poller is None:
                    logger.warning("the %s stream failed %d times in a row: polling over REST until it is back",
                                   self.venue, failures, extra={"action": "rest_fallback"})  # fmt: skip
                    poller = asyncio.create_task(self._poll_session("fallback", until=stream_back),
                                                 name=f"poll-{self.account}")  # fmt: skip
                self._set_state(AccountState.POLLING if poller is not None else AccountState.WAITING)
                delay = self._backoff.next_delay()
                if poller is not None:
                    # The stream is down and polling goes on: try the stream again at the backoff's pace, and
                    # let a poller that ended (a refused credential, the daemon stopping) end this loop too.
                    done, _ = await asyncio.wait({poller}, timeout=delay)
                    if done:
                        finished, poller = poller, None
                        finished.result()
                elif await self._wait_stop(delay):
                    return
        finally:
            if poller is not None:
                stream_back.set()
                with contextlib.suppress(_Stop):
                    await poller
            if scheduled is not None:
                scheduled.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await scheduled

    async def _until_stop(self, waiting: Awaitable[Any]) -> None:
        """Await ``waiting``, unless the daemon stops first (then :class:`_Stop`)."""
        task = asyncio.ensure_future(waiting)
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task.done() and not task.cancelled():
            task.result()  # the awaited work's own error, if any
            return
        raise _Stop

    async def _stream_session(
        self, previous: tuple[UUID, CloseReason] | None, *, on_open: Callable[[], None]
    ) -> tuple[UUID, CloseReason]:
        """One stream session, from connect to close. Returns its id and why it ended."""
        session = uuid4()
        origin = self._origin(session)
        stream = self.driver.stream()
        with log_context(session=str(session)):
            try:
                # A venue that accepts the connection and never answers must not hold the shutdown.
                await self._until_stop(stream.__aenter__())
            except _Stop:
                with contextlib.suppress(Exception):
                    await stream.close()
                raise
            except VenueError as exc:
                if stream.handshake_frames:  # what the venue said before refusing is kept too (invariant 1)
                    self._open_session(origin, Transport.WEBSOCKET, stream.url, "connect")
                    self._store_frames(_Session(origin), stream.handshake_frames)
                    reason = CloseReason.FATAL if isinstance(exc, FatalVenueError) else CloseReason.ERROR
                    self._close_session(origin, reason, str(exc), None)
                raise
            self.session = session
            self._backoff.connected(time.monotonic())
            self._open_session(origin, Transport.WEBSOCKET, stream.url, "connect" if previous is None else "reconnect")
            on_open()
            self._set_state(AccountState.STREAMING)
            logger.info("%s stream session opened on %s", self.venue, stream.url,
                        extra={"action": "session_opened", "session": str(session)})  # fmt: skip
            current = _Session(origin, checker=self._checker())
            try:
                reason, detail = await self._read_session(current, stream, previous)
            except BaseException as exc:
                # A bug or a hard cancel: the session still gets its end, so no row stays open behind us.
                why = CloseReason.SHUTDOWN if isinstance(exc, asyncio.CancelledError) else CloseReason.ERROR
                detail = f"ended by {type(exc).__name__}: {exc}"
                if self._fatal is not None:
                    why, detail = CloseReason.FATAL, str(self._fatal)
                with contextlib.suppress(WriterStopped):
                    self._close_session(origin, why, detail[:500], None)
                with contextlib.suppress(Exception):
                    await stream.close()
                raise
            finally:
                self.session = None
                if current.resynced:
                    # Everything the stream delivered before any sequence problem is in the log, and so is what
                    # the backfill found before it: the ledgers are complete up to there.
                    self.ledgers.advance(current.latest)
            last_seq = current.checker.last if current.checker is not None else None
            self._close_session(origin, reason, detail, last_seq)
            log = logger.info if reason in (CloseReason.SHUTDOWN, CloseReason.SERVER_CLOSE) else logger.warning
            log("%s stream session closed: %s%s", self.venue, reason.value, f" ({detail})" if detail else "",
                extra={"action": "session_closed", "session": str(session)})  # fmt: skip
        return session, reason

    def _checker(self) -> ContiguousSequence | None:
        return ContiguousSequence() if self.driver.sequence is SequenceKind.CONTIGUOUS else None

    async def _read_session(  # noqa: PLR0912, PLR0915 - the session's whole life in one place
        self, current: _Session, stream: AccountStream, previous: tuple[UUID, CloseReason] | None
    ) -> tuple[CloseReason, str | None]:
        """Read frames until the session ends; the first gap, a full buffer or the daemon stopping ends it."""
        origin, checker = current.origin, current.checker
        marks = self.ledgers.marks()  # before any frame of this session: the backfill starts there
        closing: list[tuple[CloseReason, str | None]] = []
        closer: list[asyncio.Task[None]] = []
        fatal: list[FatalVenueError] = []

        drain = asyncio.timeout(None)  # armed when the session starts closing: the venue gets drain_timeout

        def close(reason: CloseReason, detail: str | None) -> None:
            if not closing:
                closing.append((reason, detail))
                closer.append(asyncio.create_task(stream.close(), name=f"close-{self.account}"))
                with contextlib.suppress(RuntimeError):  # the reading may just have ended
                    drain.reschedule(asyncio.get_running_loop().time() + self.options.drain_timeout_seconds)

        async def watch_stop() -> None:
            await self.stop.wait()
            close(CloseReason.SHUTDOWN, None)

        async def resync() -> None:
            try:
                await self._resync(current, marks, previous)
            except FatalVenueError as exc:
                fatal.append(exc)
                close(CloseReason.FATAL, str(exc))

        self._store_frames(current, stream.handshake_frames)
        watcher = asyncio.create_task(watch_stop(), name=f"watch-{self.account}")
        resyncer = asyncio.create_task(resync(), name=f"resync-{self.account}")
        ended: tuple[CloseReason, str | None] = (CloseReason.SERVER_CLOSE, None)
        try:
            async with drain:
                try:
                    async for frame in stream:
                        self._store_frame(current, frame)
                        if closing:
                            continue  # draining: what the venue sent before its close frame is kept
                        if checker is not None and checker.fault is not None:
                            fault = checker.fault
                            close(
                                CloseReason.GAP,
                                f"{fault.problem.value}: expected seq {fault.expected}, received {fault.received}",
                            )
                        elif self.writer.full:
                            close(CloseReason.BACKPRESSURE, f"{self.writer.backlog} items waiting for the database")
                except VenueError as exc:
                    ended = (CloseReason.ERROR, str(exc))
                for task in closer:
                    await task
        except TimeoutError:
            logger.warning("the venue did not finish closing the connection within %g s",
                           self.options.drain_timeout_seconds, extra={"action": "close_timeout"})  # fmt: skip
        finally:
            watcher.cancel()
            for task in closer:
                if not task.done():
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            # A resync still running belongs to this session: the next session starts its own from the marks.
            resyncer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await resyncer
        if checker is not None and checker.fault is not None:
            late = checker.classify_late()
            assert late is not None
            fault = late
            if self.metrics is not None:
                self.metrics.gaps.labels(self.account, fault.problem.value).inc()
            logger.warning("sequence %s: expected seq %d, received %d; resyncing", fault.problem.value,
                           fault.expected, fault.received, extra={"action": "gap_detected"})  # fmt: skip
            self._submit_event(records.gap_detected(origin, fault))
        if fatal:
            raise fatal[0]
        return closing[0] if closing else ended

    def _store_frames(self, current: _Session, frames: list[Frame]) -> None:
        for frame in frames:
            self._store_frame(current, frame)

    def _store_frame(self, current: _Session, frame: Frame) -> None:
        """Parse a frame and hand it to the writer: an event, or a rejected frame with the reason."""
        if self._frames_received is not None:
            self._frames_received.inc()
        checker = current.checker
        context = FrameContext(self.account, self.venue, current.origin.session, frame.received_at)  # type: ignore[arg-type]
        outcome = self.driver.parse(frame.data, context)
        if isinstance(outcome, FrameRejection):
            if checker is not None and outcome.seq is not None:
                checker.check(outcome.seq)
            self.writer.submit(outcome.to_rejected_frame(context, frame.data))
            return
        if checker is not None and outcome.seq is not None:
            checker.check(outcome.seq)
        try:
            encoded = encode_event(outcome)
        except InvalidEvent as exc:
            self.writer.submit(FrameRejection(str(exc), outcome.seq).to_rejected_frame(context, frame.data))
            return
        self.writer.submit(encoded)
        self._learn(current, outcome)

    def _learn(self, current: _Session, event: Event) -> None:
        """Note ledger ids, the session's latest items while its sequence is intact, and the markets traded."""
        intact = current.checker is None or current.checker.fault is None
        what = records.ledger_of(event.kind.value)
        if what is not None:
            found = records.ledger_records(what, event.body)
            for record in found:
                mark = self.ledgers[what].note(record)
                if intact:
                    current.latest[what] = later(current.latest.get(what, LedgerMark()), mark)
            self.ledgers.note_markets(found)
        elif isinstance(event.body, PositionBody):
            self.ledgers.note_markets(event.body.positions)
        elif isinstance(event.body, OrderBody):
            self.ledgers.note_markets(event.body.orders)

    # -------------------------------------------------------------------------------------------- resync

    async def _resync(
        self, current: _Session, marks: dict[str, LedgerMark], previous: tuple[UUID, CloseReason] | None
    ) -> None:
        """Seed snapshots (venues whose stream has none) and backfill the ledgers from ``marks``, over REST.

        Retried with backoff while the session lasts; a venue error other than a refused credential is logged
        and retried, never read as "nothing happened".
        """
        origin = current.origin
        reason = "startup" if previous is None else previous[1].value
        self._submit_event(records.resync_started(origin, reason=reason, previous=previous[0] if previous else None))
        if self.metrics is not None:
            self.metrics.resyncs.labels(self.account).inc()
        retry = Backoff(initial=1.0, maximum=60.0)
        while True:
            try:
                if self.driver.seeds_after_subscribe:
                    await self._seed(origin)
                counts = await self._backfill(origin, self.driver.reconnect_ledgers, marks)
                break
            except FatalVenueError:
                raise
            except VenueError as exc:
                self._rest_failed("resync", exc)
                if await self._wait_stop(retry.next_delay()):
                    return
        if current.checker is None or current.checker.fault is None:
            self.ledgers.advance(current.latest)
        current.resynced = True
        completed = records.resync_completed(
            origin, fills=counts.get("fill", 0), funding=counts.get("funding", 0), marks=self.ledgers.marks()
        )
        self._submit_event(completed)
        logger.info("resync done: %s", ", ".join(f"{n} {what}" for what, n in counts.items()) or "nothing missed",
                    extra={"action": "resync_completed"})  # fmt: skip

    async def _scheduled(self) -> None:
        """Poll the ledgers that exist only over REST (Extended funding) on their schedule, for the daemon's life."""
        while not await self._wait_stop(self.options.funding_poll_interval_seconds):
            try:
                await self._backfill(Origin(self.account, self.venue, self.session), self.driver.scheduled_ledgers,
                                     self.ledgers.marks())  # fmt: skip
            except FatalVenueError:
                raise
            except VenueError as exc:
                self._rest_failed("scheduled poll", exc)

    def _rest_failed(self, what: str, exc: VenueError) -> None:
        self.error = str(exc)
        if self.metrics is not None:
            self.metrics.rest_errors.labels(self.account).inc()
        logger.warning("%s over REST failed, will retry: %s", what, exc, extra={"action": "rest_failed"})

    async def _seed(self, origin: Origin) -> None:
        self._poll_fetches += 1
        fetched_at = datetime.now(UTC)
        for snapshot in await self.driver.snapshots():
            self._submit_event(records.snapshot_event(origin, snapshot.body, snapshot.items, what=snapshot.what,
                                                      fetch=self._poll_fetches, fetched_at=fetched_at))  # fmt: skip
            if snapshot.what == "positions":
                self.ledgers.note_markets(i.record for i in snapshot.items)
            if self.metrics is not None:
                self.metrics.backfilled.labels(self.account, snapshot.what).inc(len(snapshot.items))

    async def _backfill(self, origin: Origin, ledgers: Collection[str], marks: dict[str, LedgerMark]) -> dict[str, int]:
        """Fetch each ledger from its mark and append the items the log lacks, oldest first.

        A REST answer is complete from the mark to the moment of the call, so the ledger's mark moves to the
        latest item it holds.
        """
        counts: dict[str, int] = {}
        for what in ledgers:
            ledger = self.ledgers[what]
            items = [item async for item in self.driver.ledger(what, marks[what], sorted(self.ledgers.markets))]
            fetched_at = datetime.now(UTC)
            new = [item for item in items if not ledger.knows(item.record)]
            new.sort(key=lambda item: records.ledger_time(what, item.record))
            for item in new:
                self._submit_event(records.ledger_event(origin, what, item, fetched_at=fetched_at))
            for item in items:
                ledger.advance(ledger.note(item.record))
            if what == "fill":
                self.ledgers.note_markets(item.record for item in new)
            counts[what] = len(new)
            if self.metrics is not None:
                self.metrics.backfilled.labels(self.account, what).inc(len(new))
        return counts

    # --------------------------------------------------------------------------------------------- poll

    async def _poll_once(self, origin: Origin) -> None:
        await self._seed(origin)
        await self._backfill(origin, self.driver.poll_ledgers, self.ledgers.marks())

    async def _poll_session(self, reason: str, *, until: asyncio.Event | None) -> None:
        """Serve the account by REST polling until the daemon stops or ``until`` is set (the stream is back)."""
        session = uuid4()
        origin = self._origin(session)
        with log_context(session=str(session)):
            self._open_session(origin, Transport.REST_POLL, self.driver.rest_url, reason)
            self.fallback = until is not None
            if self.metrics is not None and self.fallback:
                self.metrics.rest_fallback.labels(self.account).set(1)
            self._set_state(AccountState.POLLING)
            close_reason, detail = CloseReason.SHUTDOWN, None
            try:
                while True:
                    try:
                        # A slow venue must not hold the shutdown: the poll gives way to the stop.
                        await self._until_stop(self._poll_once(origin))
                    except FatalVenueError as exc:
                        close_reason, detail = CloseReason.FATAL, str(exc)
                        raise
                    except VenueError as exc:
                        self._rest_failed("poll", exc)
                    waiters = [asyncio.ensure_future(self.stop.wait())]
                    if until is not None:
                        waiters.append(asyncio.ensure_future(until.wait()))
                    _, pending = await asyncio.wait(waiters, timeout=self.options.poll_interval_seconds,
                                                       return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                    for waiter in pending:
                        waiter.cancel()
                    if self.stop.is_set():
                        break
                    if until is not None and until.is_set():
                        close_reason, detail = CloseReason.STREAM_RESTORED, "the stream is back"
                        break
            finally:
                if self._fatal is not None:
                    close_reason, detail = CloseReason.FATAL, str(self._fatal)
                self._close_session(origin, close_reason, detail, None)
                self.fallback = False
                if self.metrics is not None:
                    self.metrics.rest_fallback.labels(self.account).set(0)
                logger.info("REST polling session closed: %s", close_reason.value,
                            extra={"action": "session_closed", "session": str(session)})  # fmt: skip


_LEDGER_KINDS = {"fill": "fill", "funding": "funding", "transfer": "transfer", "bust": "fill_bust"}


def _as_rejected(event: Event, reason: str) -> RejectedFrame:
    raw = event.raw if event.raw is not None else orjson.dumps(event.body.model_dump(mode="json")).decode()
    return RejectedFrame(account=event.account, venue=event.venue, source=Source(event.source),
                         received_at=event.received_at, reason=reason[:500],
                         raw=raw.encode("utf-8", errors="surrogatepass"), session=event.session,
                         seq=event.seq)  # fmt: skip
