"""The per-account hash chain over the event log (tamper evidence). Pure: no I/O.

Every event stores ``chain_hash``, the SHA-256 of

    b"statekeeper/event-chain/v1\\x00" || previous || canonical JSON of
    [account, venue, session, seq, event_key, kind, snapshot, source, venue_time, received_at, raw, content_hash]

where ``previous`` is the ``chain_hash`` of the account's previous event (by log position), or 32 zero bytes for
the account's first event. The times are ISO 8601 in UTC with microseconds as stored, ``session`` is the UUID's
text, ``content_hash`` is hex. The payload is covered through ``content_hash`` (the SHA-256 of the canonical
payload and the event's identity, :func:`statekeeper.events.content_hash`), which a verifier recomputes from the
stored payload: so everything a verifier reads from one stored row (payload, raw frame, times, key, kind...) is
checked, not only the hash columns. The log position (``id``) and ``appended_at`` are not covered: ``id`` is
drawn by PostgreSQL during the COPY, after the link is computed. Reordering, deleting or inserting an event
still breaks the chain, because each link covers the previous one.

The link is computed by :meth:`statekeeper.eventlog.PostgresEventLog.append`, under the append lock that
serialises appends (so an account's previous link is always the one committed last), and recomputed by
:mod:`statekeeper.audit.verify_log`. Canonical JSON (sorted keys, no whitespace, orjson) and explicit UTC text
make the bytes the same on every machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import orjson

from statekeeper.events import canonical_json, content_hash

CHAIN_DOMAIN = b"statekeeper/event-chain/v1\x00"
GENESIS = bytes(32)
"""The "previous link" of an account's first event."""

_ZERO = timedelta(0)


def _utc(value: datetime) -> str:
    if value.utcoffset() != _ZERO:
        value = value.astimezone(UTC)
    return value.isoformat()


def link_hash(
    previous: bytes,
    *,
    account: str,
    venue: str,
    session: UUID | None,
    seq: int | None,
    key: str,
    kind: str,
    snapshot: bool,
    source: str,
    venue_time: datetime,
    received_at: datetime,
    raw: str | None,
    content_hash: bytes,
) -> bytes:
    """The chain hash of one event, given the previous event's chain hash."""
    fields = [account, venue, None if session is None else str(session), seq, key, kind, snapshot, source,
              _utc(venue_time), _utc(received_at), raw, content_hash.hex()]  # fmt: skip
    return hashlib.sha256(CHAIN_DOMAIN + previous + orjson.dumps(fields)).digest()


def stored_link(previous: bytes, row: Mapping[str, Any]) -> bytes:
    """:func:`link_hash` of a stored ``events`` row (its column names)."""
    return link_hash(
        previous,
        account=row["account"],
        venue=row["venue"],
        session=row["session"],
        seq=row["seq"],
        key=row["event_key"],
        kind=row["kind"],
        snapshot=row["snapshot"],
        source=row["source"],
        venue_time=row["venue_time"],
        received_at=row["received_at"],
        raw=row["raw"],
        content_hash=bytes(row["content_hash"]),
    )


def stored_content_hash(row: Mapping[str, Any]) -> bytes:
    """The content hash a stored row's own content gives (its payload as decoded JSON, made canonical again)."""
    return content_hash(
        kind=row["kind"],
        venue=row["venue"],
        source=row["source"],
        snapshot=row["snapshot"],
        venue_time=row["venue_time"],
        payload=canonical_json(row["payload"]),
    )
