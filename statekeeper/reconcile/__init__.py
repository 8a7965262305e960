"""Reconciliation: verify the projections against the venues' REST APIs, report, heal through the log.

* :mod:`.diff` (pure): what is compared, field by field with tolerances, and how a difference becomes a
  discrepancy (race rule, confirmation, the open discrepancies of earlier passes);
* :mod:`.runner` (I/O): one pass of one account (REST, the projection at a known log position, the heal events,
  the ``reconciliation_runs`` and ``reconciliation_discrepancies`` rows) and the periodic service of the daemon;
* :mod:`.report` (pure): the readable table and the JSON of ``statekeeper reconcile``.

See docs/reconciliation.md.
"""
