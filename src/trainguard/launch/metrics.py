"""``--metrics-port``: the supervisor's view as Prometheus metrics, served on 127.0.0.1.

==============================================  =======  ====================================
``trainguard_alerts_total{rule,severity}``      counter  alerts of this run, by id and severity
``trainguard_last_step{rank}``                  gauge    last optimizer step a rank's guard saw
``trainguard_step_seconds{rank}``               gauge    median recent step time of a rank
``trainguard_ranks_guarded``                    gauge    ranks with a guard attached now
==============================================  =======  ====================================

``prometheus_client`` is the optional ``metrics`` extra; it is imported only when a port
is asked for, and its absence is a ``ConfigError`` that says how to install it. The server
listens on the loopback address only: the metrics name ranks and alert ids, which are not
for the whole network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainguard.errors import ConfigError

__all__ = ["Metrics"]


class Metrics:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            raise ConfigError(
                "--metrics-port needs prometheus_client: pip install 'trainguard[metrics]'"
            ) from None
        self.registry = prom.CollectorRegistry(auto_describe=True)
        self.alerts = prom.Counter(
            "trainguard_alerts",
            "Alerts recorded for this run, by alert id and severity.",
            ["rule", "severity"],
            registry=self.registry,
        )
        self.last_step = prom.Gauge(
            "trainguard_last_step",
            "Last optimizer step reported by the rank's guard.",
            ["rank"],
            registry=self.registry,
        )
        self.step_seconds = prom.Gauge(
            "trainguard_step_seconds",
            "Median of the rank's recent step times, in seconds.",
            ["rank"],
            registry=self.registry,
        )
        self.ranks_guarded = prom.Gauge(
            "trainguard_ranks_guarded",
            "Ranks with a trainguard guard attached now.",
            registry=self.registry,
        )
        try:
            started: Any = prom.start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc}") from None
        self._server = started[0] if isinstance(started, tuple) else None
        self.port = int(self._server.server_port) if self._server is not None else port

    def alert(self, rule: str, severity: str) -> None:
        self.alerts.labels(rule=rule, severity=severity).inc()

    def ranks(self, status: Mapping[int, tuple[int | None, float | None, bool]]) -> None:
        """``status``: rank -> (last step, median step seconds, guard attached)."""
        for rank, (step, seconds, _) in status.items():
            if step is not None:
                self.last_step.labels(rank=str(rank)).set(step)
            if seconds is not None:
                self.step_seconds.labels(rank=str(rank)).set(seconds)
        self.ranks_guarded.set(sum(1 for _, _, attached in status.values() if attached))

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
