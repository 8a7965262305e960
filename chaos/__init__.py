"""Seeded fault injection against the real daemon, with invariants checked after every run (``make chaos``).

Each run (one seed) starts a simulated venue in this process, a TCP proxy in front of it that can cut the network,
and ``statekeeper run`` as a subprocess on a PostgreSQL server of the harness's own. It drives the venue's activity
through a sequence of episodes, one fault each, drawn from the seed: ``kill -9`` of the daemon (at a random moment,
or while one of its transactions is open: an append or a projector batch between its rows and its commit),
PostgreSQL stopped and started again, the network cut, and every fault of the simulated venue (disconnect, gap,
duplicate, reorder, delay, malformed frame, REST 5xx/429/slow, drift). After each fault it stops the activity (the
venue's truth holds still) and measures the time until the projections equal the truth again. At the end of the
run it forces a last resync and checks:

* no frame lost: every frame the venue sent is in ``events`` or ``rejected_frames``, except the tail of a
  connection that ended abnormally (a killed daemon, a cut network) when a later session was resynced;
* no duplicate: event keys are unique, and no fill or funding payment is stored twice from the same source;
* the projections equal the venue's truth (every field, marks included) and equal a replay of the log by the pure
  folds; ``statekeeper replay --verify``, ``statekeeper verify-log`` and ``statekeeper reconcile`` when they exist.

A failing run prints its seed and the command that repeats it: the schedule, the venue's activity and its faults
are the seed's; the daemon is a real process, so its timing is the machine's.
"""
