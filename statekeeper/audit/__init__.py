"""Audit: replay the log to any point (the projectors' own folds), a stable digest of the replayed state, the
comparison with the live projections, and the per-account hash chain that makes the log tamper-evident.

* :mod:`.chain`: the hash chain (pure): how each event's link is computed, on append and when verifying;
* :mod:`.reader`: streams one account's events from PostgreSQL in large ordered pages (COPY);
* :mod:`.state`: the replayed state of one account, in memory up to a bound and spilled to disk past it;
* :mod:`.replay`: replay, digest and ``--verify``;
* :mod:`.verify_log`: ``statekeeper verify-log``;
* :mod:`.render`: the replayed state as a rich table, JSON or CSV.
"""
