"""Prometheus metrics of a store, served by ``dstune daemon --metrics-port``.

The numbers are read from the store at each scrape (a custom collector), so
they are right however many daemons or manual runs write to the database,
and survive restarts: nothing is counted in the daemon's memory.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from dstune.utc import as_utc

if TYPE_CHECKING:
    from dstune.store import Store


class StoreCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        store = self.store
        incumbent = GaugeMetricFamily("dstune_incumbent_samples_per_second",
                                      "Throughput of the configuration applied to each workload.", labels=["workload"])
        for name in store.workload_names():
            applied = store.applied(name)
            if applied is not None and applied.samples_per_s is not None:
                incumbent.add_metric([name], applied.samples_per_s)
        yield incumbent

        iterations = CounterMetricFamily("dstune_iterations", "Iterations by workload and result (the decision of "
                                         "completed ones, else their status).", labels=["workload", "result"])
        for workload, result, count in store.iteration_results():
            iterations.add_metric([workload, result], count)
        yield iterations

        trials = CounterMetricFamily("dstune_trials", "Trials by workload and status.", labels=["workload", "status"])
        for workload, status, count in store.trial_counts():
            trials.add_metric([workload, status], count)
        yield trials

        now = datetime.now(timezone.utc)
        age = GaugeMetricFamily("dstune_daemon_heartbeat_age_seconds",
                                "Seconds since each running daemon last beat.", labels=["daemon", "host", "pid"])
        for daemon in store.daemons():
            if daemon.status == "running":
                beat = as_utc(daemon.heartbeat_at)
                age.add_metric([str(daemon.id), daemon.host, str(daemon.pid)], (now - beat).total_seconds())
        yield age

        due = GaugeMetricFamily("dstune_schedule_next_due_timestamp_seconds",
                                "When each enabled schedule is next due (Unix time).", labels=["schedule", "workload_file"])
        for schedule in store.schedules():
            if schedule.enabled:
                due.add_metric([str(schedule.id), schedule.workload_file], as_utc(schedule.next_due_at).timestamp())
        yield due


def serve_metrics(store: Store, addr: str, port: int) -> int:
    """Serve /metrics on ``addr:port`` in a background thread; return the port (0 picks a free one)."""
    from prometheus_client import start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return int(server.server_port)
