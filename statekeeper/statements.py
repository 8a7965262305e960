"""Named SQL statements of the hot paths, with bind parameters only.

Every statement here is prepared against a freshly migrated database by the tests, so a statement and the schema
(:mod:`statekeeper.schema`) cannot drift apart unnoticed.
"""

from __future__ import annotations

_EVENT_COLUMNS = """account, venue, session, seq, event_key, kind, snapshot, source,
    venue_time, received_at, payload, raw, content_hash"""

#: The message's columns, in the order of :func:`statekeeper.eventlog.copy_record` (``event_conflicts`` holds them
#: too).
COPY_COLUMNS: tuple[str, ...] = tuple(c.strip() for c in _EVENT_COLUMNS.split(","))
#: The columns an append COPYs into ``events``: the message's, then its link in its account's hash chain.
APPEND_COLUMNS: tuple[str, ...] = (*COPY_COLUMNS, "chain_hash")

# Appending is lock, probe (with the chain tips), insert (or COPY and read back), in one transaction:
# 1. Take the append lock (held until commit) and check the isolation level: under READ COMMITTED every later
#    statement sees all appends committed before the lock was granted, so the probe below cannot race.
TAKE_APPEND_LOCK = """
SELECT pg_advisory_xact_lock(21323, 1), current_setting('transaction_isolation') AS isolation
"""

# 1'. Or, for an append's own transaction (statekeeper.eventlog.PostgresEventLog.appending), the lock with the
#     transaction's BEGIN, in one round trip (a simple query: two statements, no parameters), the isolation level
#     named rather than checked.
BEGIN_APPENDING = "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock(21323, 1)"

# 2. In one statement: the current head; which of the batch's keys are already stored (one index probe per key:
#    LATERAL with LIMIT keeps it a nested loop whatever the statistics say, never a scan of the log), rows with
#    ``tip`` false; and the last link of each of the batch's accounts' hash chains (statekeeper.audit.chain), from
#    which the new rows' links go on (one backward probe of the primary key (account, id) per account; under the
#    lock no other append can move it), rows with ``tip`` true.
PROBE_KEYS = """
SELECT false AS tip, head.id AS head, found.account, found.event_key, found.id, found.content_hash,
       NULL::bytea AS chain_hash
FROM (SELECT coalesce(max(id), 0) AS id FROM events) AS head
LEFT JOIN (
    SELECT e.account, e.event_key, e.id, e.content_hash
    FROM unnest($1::text[], $2::text[]) AS k(account, event_key)
    JOIN LATERAL (
        SELECT account, event_key, id, content_hash
        FROM events
        WHERE events.account = k.account AND events.event_key = k.event_key
        LIMIT 1
    ) AS e ON true
) AS found ON true
UNION ALL
SELECT true, NULL, a.account, NULL, NULL, NULL, t.chain_hash
FROM unnest($3::text[]) AS a(account)
LEFT JOIN LATERAL (
    SELECT chain_hash FROM events WHERE events.account = a.account ORDER BY id DESC LIMIT 1
) AS t ON true
"""

# 3. The new rows (see APPEND_COLUMNS), in log order, with the positions they were given. A small batch (the live
#    stream's few events) is one INSERT ... RETURNING: one round trip.
INSERT_EVENTS = f"""
INSERT INTO events ({_EVENT_COLUMNS}, chain_hash)
SELECT {_EVENT_COLUMNS}, chain_hash
FROM unnest($1::text[], $2::text[], $3::uuid[], $4::int8[], $5::text[], $6::text[], $7::bool[], $8::text[],
            $9::timestamptz[], $10::timestamptz[], $11::jsonb[], $12::text[], $13::bytea[], $14::bytea[])
     WITH ORDINALITY AS n({_EVENT_COLUMNS}, chain_hash, place)
ORDER BY place
RETURNING id
"""  # noqa: S608 - the interpolated text is a constant column list

#    From COPY_FROM_ROWS new rows they are COPYed (15% faster than the INSERT at a thousand rows; docs/event-log.md),
#    and then the positions are read back: under the lock, the rows after the head are exactly this batch's, in
#    COPY order.
COPY_FROM_ROWS = 50
READ_BACK_APPENDED = """
SELECT id FROM events WHERE id > $1 ORDER BY id
"""

RECORD_CONFLICTS = f"""
INSERT INTO event_conflicts (existing_event_id, occurrences, {_EVENT_COLUMNS})
SELECT existing_event_id, occurrences, account, venue, session, seq, event_key, kind, snapshot, source,
       venue_time, received_at, payload::jsonb, raw, content_hash
FROM unnest($1::int8[], $2::int4[], $3::text[], $4::text[], $5::uuid[], $6::int8[], $7::text[], $8::text[],
            $9::bool[], $10::text[], $11::timestamptz[], $12::timestamptz[], $13::text[], $14::text[],
            $15::bytea[])
     AS c(existing_event_id, occurrences, account, venue, session, seq, event_key, kind, snapshot, source,
          venue_time, received_at, payload, raw, content_hash)
ON CONFLICT (account, event_key, content_hash) DO UPDATE
SET occurrences = event_conflicts.occurrences + excluded.occurrences,
    last_seen_at = now()
RETURNING id
"""  # noqa: S608 - the interpolated text is a constant column list

INSERT_REJECTED_FRAMES = """
INSERT INTO rejected_frames (account, venue, session, seq, source, received_at, reason, raw)
SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::int8[], $5::text[], $6::timestamptz[],
                     $7::text[], $8::bytea[])
RETURNING id
"""

_STORED_COLUMNS = """id, account, venue, session, seq, event_key, kind, snapshot, source,
    venue_time, received_at, payload, raw, content_hash, appended_at"""

READ_AFTER = f"""
SELECT {_STORED_COLUMNS}
FROM events
WHERE id > $1
ORDER BY id
LIMIT $2
"""  # noqa: S608 - the interpolated text is a constant column list

READ_AFTER_FOR_ACCOUNTS = f"""
SELECT {_STORED_COLUMNS}
FROM events
WHERE account = ANY($1::text[]) AND id > $2
ORDER BY id
LIMIT $3
"""  # noqa: S608 - the interpolated text is a constant column list

HEAD = "SELECT coalesce(max(id), 0) FROM events"

GET_CHECKPOINT = "SELECT position FROM projector_checkpoints WHERE account = $1 AND name = $2"

# Moves forward only: a checkpoint that would go back is a bug, and the caller gets NULL instead of a row.
ADVANCE_CHECKPOINT = """
INSERT INTO projector_checkpoints (account, name, position, updated_at)
VALUES ($1, $2, $3, now())
ON CONFLICT (account, name) DO UPDATE
SET position = excluded.position, updated_at = excluded.updated_at
WHERE projector_checkpoints.position <= excluded.position
RETURNING position
"""

LIST_CONFLICTS = """
SELECT account, id, event_key, existing_event_id, kind, source, session, seq, content_hash,
       first_seen_at, last_seen_at, occurrences
FROM event_conflicts
WHERE ($1::text IS NULL OR account = $1)
ORDER BY account, id
LIMIT $2
"""

# ------------------------------------------------------------------------------------------ ingest

# Session rows are written by the ingest daemon's writer in the same transaction as the session's control
# events; both statements are idempotent, so a batch retried after a lost commit changes nothing twice.
OPEN_SESSION = """
INSERT INTO stream_sessions (account, session, venue, transport, url, owner, opened_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (account, session) DO NOTHING
"""

CLOSE_SESSION = """
UPDATE stream_sessions
SET closed_at = $3, close_reason = $4, close_detail = $5, last_seq = coalesce($6, last_seq)
WHERE account = $1 AND session = $2 AND closed_at IS NULL
"""

OPEN_SESSIONS = """
SELECT session, venue, transport, owner, opened_at
FROM stream_sessions
WHERE account = $1 AND closed_at IS NULL
ORDER BY opened_at
"""

# The last seq stored for a session: its events are the account's latest, so the backward walk is short.
LAST_SEQ_OF_SESSION = """
SELECT seq FROM events
WHERE account = $1 AND session = $2 AND seq IS NOT NULL
ORDER BY id DESC
LIMIT 1
"""

# The account's latest events of one kind (newest first), from which the ingest daemon resumes its backfills.
LATEST_OF_KIND = """
SELECT payload FROM events
WHERE account = $1 AND kind = $2
ORDER BY id DESC
LIMIT $3
"""

# The ledger marks the last resync or session close recorded: where a restarted daemon resumes its backfills.
LATEST_MARKS = """
SELECT payload -> 'marks' AS marks FROM events
WHERE account = $1 AND kind IN ('resync_completed', 'session_closed') AND payload ? 'marks'
ORDER BY id DESC
LIMIT 1
"""

# Claims: one daemon ingests an account at a time (a session-level advisory lock, released when its holder's
# connection ends, so a killed daemon's accounts are free again at once).
CLAIM_LOCK_CLASS = 21324
"""The first key of the advisory lock a daemon holds per account (the second: ``hashtext(account)``)."""
TRY_CLAIM_ACCOUNT = f"SELECT pg_try_advisory_lock({CLAIM_LOCK_CLASS}, hashtext($1))"
RELEASE_ACCOUNT = f"SELECT pg_advisory_unlock({CLAIM_LOCK_CLASS}, hashtext($1))"

# ------------------------------------------------------------------------------------------ audit

# One event as a line of text, for the readers that fold (statekeeper.projections.fold.parse_events): tab-separated
# id, venue, kind, snapshot, source, venue_time, received_at, payload; times in ISO 8601 as JSON writes them
# (whatever the session's DateStyle; parse_events turns an offset other than UTC's into UTC). jsonb's text form
# escapes control characters, so neither a tab nor a newline can occur inside a field. The projector
# (statekeeper.projections.store.READ_BATCH) and replay read pages of these lines as one text value: far less to
# receive and split than a record per event.
EVENT_LINE = """concat_ws(E'\\t', id, venue, kind, snapshot, source, to_json(venue_time) #>> '{}',
          to_json(received_at) #>> '{}', payload::text)"""

# The same line with the times in the session's own text form: ISO 8601 on a replay connection, whose DateStyle
# (ISO) and TimeZone (UTC) are set when it connects (statekeeper.audit.reader.SERVER_SETTINGS), and a tenth of the
# server's work per event less than the JSON form (replay reads every event of the log).
REPLAY_LINE = "concat_ws(E'\\t', id, venue, kind, snapshot, source, venue_time, received_at, payload::text)"

# An account's events after a position, in log order, come from the primary key (account, id), read from the
# position on. Written the plain way (account = $1 AND id > <position> ORDER BY id), the planner's generic plans
# often walk ix_events_id instead (every account's events in log order) and drop the other accounts' rows: on a
# log that interleaves accounts, a page then reads every other account's events in between, and a quiet account's
# few new events cost a walk through everything logged since its last one (70,000 rows for 10 events, 31 ms
# instead of 0.2). So the condition names the account as a range (not an equality, which would let the planner
# drop it from the order), the position by a row comparison (which only (account, id) can take as an index
# condition), and the order is (account, id): only the primary key gives it without a sort.
ACCOUNT_AFTER = "account >= {account} AND account <= {account} AND (account, id) > ({account}, {position})"
ACCOUNT_ORDER = "account, id"

# Replay reads one account's events in pages of consecutive positions (see docs/audit.md). Only the kinds the
# folds read ($6) are sent; $3 is the last position replayed, $4 an optional time limit on the clock $5 names.
REPLAY_PAGE = f"""
SELECT string_agg({REPLAY_LINE}, E'\\n' ORDER BY id) AS page, max(id) AS last, count(*) AS events
FROM (
    SELECT id, venue, kind, snapshot, source, venue_time, received_at, payload
    FROM events
    WHERE {ACCOUNT_AFTER.format(account="$1", position="$2")} AND (account, id) <= ($1, $3) AND kind = ANY($6::text[])
      AND ($4::timestamptz IS NULL OR (CASE WHEN $5::text = 'received' THEN received_at ELSE venue_time END) <= $4)
    ORDER BY {ACCOUNT_ORDER}
    LIMIT $7
) AS page
"""  # noqa: S608 - the interpolated text is a constant expression

# Every account in the log, by a loose index scan over the primary key (account, id): one probe per account.
ACCOUNTS_IN_LOG = """
WITH RECURSIVE found(account) AS (
    (SELECT account FROM events ORDER BY account LIMIT 1)
    UNION ALL
    SELECT (SELECT e.account FROM events AS e WHERE e.account > found.account ORDER BY e.account LIMIT 1)
    FROM found WHERE found.account IS NOT NULL
)
SELECT account FROM found WHERE account IS NOT NULL
"""

# How many events a replay up to position $2 reads (for its progress bar): an index-only count per account; up to
# $3 at most (NULL: all of them), when only whether there are that many matters.
COUNT_UP_TO = """
SELECT count(*) FROM (SELECT FROM events WHERE account = ANY($1::text[]) AND id <= $2 LIMIT $3) AS up_to
"""

# The account's last log position (0: none), read with its projection by `replay --verify`.
ACCOUNT_HEAD = "SELECT coalesce(max(id), 0) FROM events WHERE account = $1"

# verify-log reads every stored column an event's links cover, account by account in log order.
CHAIN_PAGE = f"""
SELECT id, account, venue, session, seq, event_key, kind, snapshot, source, venue_time, received_at, payload, raw,
       content_hash, chain_hash
FROM events
WHERE {ACCOUNT_AFTER.format(account="$1", position="$2")}
ORDER BY {ACCOUNT_ORDER}
LIMIT $3
"""  # noqa: S608 - the interpolated text is a constant condition

ALL: dict[str, str] = {
    "take_append_lock": TAKE_APPEND_LOCK,
    "probe_keys": PROBE_KEYS,
    "insert_events": INSERT_EVENTS,
    "read_back_appended": READ_BACK_APPENDED,
    "record_conflicts": RECORD_CONFLICTS,
    "insert_rejected_frames": INSERT_REJECTED_FRAMES,
    "read_after": READ_AFTER,
    "read_after_for_accounts": READ_AFTER_FOR_ACCOUNTS,
    "head": HEAD,
    "get_checkpoint": GET_CHECKPOINT,
    "advance_checkpoint": ADVANCE_CHECKPOINT,
    "list_conflicts": LIST_CONFLICTS,
    "open_session": OPEN_SESSION,
    "close_session": CLOSE_SESSION,
    "open_sessions": OPEN_SESSIONS,
    "last_seq_of_session": LAST_SEQ_OF_SESSION,
    "latest_of_kind": LATEST_OF_KIND,
    "latest_marks": LATEST_MARKS,
    "try_claim_account": TRY_CLAIM_ACCOUNT,
    "release_account": RELEASE_ACCOUNT,
    "replay_page": REPLAY_PAGE,
    "accounts_in_log": ACCOUNTS_IN_LOG,
    "count_up_to": COUNT_UP_TO,
    "chain_page": CHAIN_PAGE,
    "account_head": ACCOUNT_HEAD,
}
