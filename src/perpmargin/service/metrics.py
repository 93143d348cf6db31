"""Prometheus metrics of the service (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["ServiceMetrics"]


class ServiceMetrics:
    """Command latency, queue depth, acknowledged commands, liquidations, insurance fund, HTTP errors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.command_latency = Histogram(
            "perpmargin_command_latency_seconds",
            "Time from a mutating request entering the sequencer queue to its durable result",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
            registry=self.registry,
        )
        self.queue_depth = Gauge("perpmargin_queue_depth", "Requests waiting for the sequencer", registry=self.registry)
        self.batch_size = Histogram(
            "perpmargin_group_commit_commands",
            "Commands per group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=self.registry,
        )
        self.acknowledged = Counter(
            "perpmargin_commands_acknowledged", "Commands journaled and acknowledged", registry=self.registry
        )
        self.rejected = Counter(
            "perpmargin_commands_rejected", "Commands refused by the engine", registry=self.registry
        )
        self.liquidations = Counter(
            "perpmargin_liquidations", "Liquidations started (LiquidationStarted events)", registry=self.registry
        )
        self.insurance_fund = Gauge(
            "perpmargin_insurance_fund_balance",
            "Insurance fund balance (display only; the exact figure is at /v1/insurance)",
            ["fund", "asset"],
            registry=self.registry,
        )
        self.http_errors = Counter(
            "perpmargin_http_errors", "Error responses by status and code", ["status", "code"], registry=self.registry
        )
        self.fail_stopped = Gauge(
            "perpmargin_fail_stopped",
            "1 once the journal failed and the service stopped acknowledging",
            registry=self.registry,
        )
