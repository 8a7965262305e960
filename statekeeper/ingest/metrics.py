"""The ingest daemon's Prometheus metrics, on a registry of its own (``/metrics`` serves it)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series beside every counter: they only add noise to scrapes

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class IngestMetrics:
    """Every metric the daemon exports; label ``account`` everywhere (plus ``venue`` where it helps)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.frames_received = Counter(
            "statekeeper_frames_received", "Frames received from venue streams", ["account", "venue"], registry=r
        )
        self.events_appended = Counter(
            "statekeeper_events_appended", "Events appended to the log (new, not duplicates)", ["account"], registry=r
        )
        self.duplicates = Counter(
            "statekeeper_events_duplicate", "Events already in the log with the same content", ["account"], registry=r
        )
        self.conflicts = Counter(
            "statekeeper_event_conflicts", "Events whose key was taken by different content", ["account"], registry=r
        )
        self.rejected_frames = Counter(
            "statekeeper_rejected_frames", "Frames stored in rejected_frames with a reason", ["account"], registry=r
        )
        self.gaps = Counter(
            "statekeeper_sequence_problems", "Gaps, repeats and reorders detected", ["account", "problem"], registry=r
        )
        self.resyncs = Counter(
            "statekeeper_resyncs", "Resyncs (fresh snapshot and REST backfill) started", ["account"], registry=r
        )
        self.reconnects = Counter(
            "statekeeper_reconnects", "Stream connection attempts after the first", ["account"], registry=r
        )
        self.connect_failures = Counter(
            "statekeeper_connect_failures", "Stream connection attempts that failed", ["account"], registry=r
        )
        self.backfilled = Counter(
            "statekeeper_backfilled_items", "Items fetched over REST by backfills and polls", ["account", "what"],
            registry=r,
        )  # fmt: skip
        self.orders_resolved = Counter(
            "statekeeper_orders_resolved",
            "Orders a snapshot no longer listed, fetched by id, by outcome (submitted, unchanged, not_found, "
            "rejected, failed)", ["account", "outcome"], registry=r,
        )  # fmt: skip
        self.rest_errors = Counter(
            "statekeeper_rest_errors", "REST calls that failed after their retries", ["account"], registry=r
        )
        self.append_errors = Counter(
            "statekeeper_append_errors", "Batches the database did not take (retried)", ["account"], registry=r
        )
        self.append_seconds = Histogram(
            "statekeeper_append_seconds", "Time to append one batch (one transaction)", ["account"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.durable_seconds = Histogram(
            "statekeeper_frame_durable_seconds", "From a frame's arrival to its commit in the log", ["account"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "statekeeper_append_batch_size", "Items per append batch", ["account"],
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000), registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "statekeeper_queue_depth", "Items received and not yet stored", ["account"], registry=r
        )
        self.last_event_age = Gauge(
            "statekeeper_last_event_age_seconds", "Seconds since the account's last stored event", ["account"],
            registry=r,
        )  # fmt: skip
        self.state = Gauge(
            "statekeeper_account_state", "1 for the account's current ingest state", ["account", "state"], registry=r
        )
        self.rest_fallback = Gauge(
            "statekeeper_rest_fallback", "1 while the account is served by REST polling instead of its stream",
            ["account"], registry=r,
        )  # fmt: skip

    def track_account(self, account: str, last_stored: Callable[[], float | None], depth: Callable[[], int]) -> None:
        """Compute the account's gauges at scrape time from the writer's state."""

        def age() -> float:
            at = last_stored()
            return float("nan") if at is None else max(0.0, time.monotonic() - at)

        self.last_event_age.labels(account).set_function(age)
        self.queue_depth.labels(account).set_function(lambda: float(depth()))

    def set_state(self, account: str, state: str, states: tuple[str, ...]) -> None:
        for name in states:
            self.state.labels(account, name).set(1.0 if name == state else 0.0)
