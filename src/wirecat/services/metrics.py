"""The metrics service: Prometheus text exposition of a server's counters over HTTP/1.1.

``wirecat serve --metrics tcp://127.0.0.1:9107`` (off by default; loopback unless told
otherwise). ``GET /metrics`` answers the text format (version 0.0.4) made by
``prometheus_client`` from the server's own counters (:attr:`ServerContext.metrics`),
read at scrape time: nothing is counted twice and the hot paths are untouched.

Exposed, all prefixed ``wirecat_``:

- ``connections_open{service}``: stream connections open now, per service (gauge);
- ``connections_accepted_total{service}``, ``connections_refused_total{service,reason}``
  (``reason``: ``acl``, ``closing``, ``max_conns``, ``per_source``, ``rate``);
- ``bytes_received_total{service}``, ``bytes_sent_total{service}``: bytes through the event
  loop (one integer addition per chunk; bytes the kernel moves alone, ``sendfile``
  downloads, are in ``files_bytes_out_total``);
- ``connections_per_source_max``: the most connections one source address holds (gauge);
- ``<counter>_total``: every counter of the server (``accepted``, ``refused_acl``,
  ``refused_max_conns``, ``refused_per_source``, ``refused_rate``, ``slow_consumers``,
  ``idle_timeouts``, ``login_timeouts``, ``line_timeouts``, ``handler_errors``,
  ``tls_handshake_failures``, the services' own such as ``echo_datagrams`` and ``chat_*``,
  ``files_*``);
- ``up``: 1.

Labels are bounded: per service (and refusal reason), never per peer. With several worker
processes each has its own counters and its own metrics listener (see
:func:`wirecat.app.build_services`): worker ``i`` serves them on the metrics port plus ``i``
and labels its samples ``worker="i"``.

HTTP is parsed by ``h11`` (RFC 9112): anything but ``GET``/``HEAD`` gets 405, another path
404, a malformed or oversized request 400; every response closes the connection.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterator, Sequence

import h11
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from ..endpoints import Endpoint
from ..errors import ConfigError
from ..runtime.handler import ServerContext, StreamHandler
from ..runtime.limits import Limits
from ..runtime.server import Service

__all__ = ["MAX_REQUEST", "MetricsService", "exposition", "worker_endpoint"]

#: Largest request head accepted, in bytes (h11 refuses larger ones before buffering more).
MAX_REQUEST = 8192

_NAME = re.compile(r"[^a-zA-Z0-9_]")

#: What ``generate_latest`` writes: the classic text format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}


class _ContextCollector(Collector):
    def __init__(self, ctx: ServerContext, worker: int) -> None:
        self.ctx = ctx
        self.worker = str(worker)

    def collect(self) -> Iterator[Metric]:
        ctx, worker = self.ctx, self.worker
        up = GaugeMetricFamily("wirecat_up", "1 while the server runs", labels=["worker"])
        up.add_metric([worker], 1)
        yield up
        open_by_service: Counter[str] = Counter(
            h.service.name if h.service is not None else "-" for h in ctx.connections
        )
        gauge = GaugeMetricFamily(
            "wirecat_connections_open",
            "Stream connections open now",
            labels=["service", "worker"],
        )
        for service, n in sorted(open_by_service.items()):
            gauge.add_metric([service, worker], n)
        yield gauge
        top = GaugeMetricFamily(
            "wirecat_connections_per_source_max",
            "The most connections one source address holds now",
            labels=["worker"],
        )
        top.add_metric([worker], max(ctx.per_source.values(), default=0))
        yield top
        per_service = ctx.service_counters()
        families = {
            "accepted": CounterMetricFamily(
                "wirecat_connections_accepted",
                "Stream connections accepted, per service",
                labels=["service", "worker"],
            ),
            "bytes_received": CounterMetricFamily(
                "wirecat_bytes_received",
                "Bytes received on stream connections through the event loop, per service",
                labels=["service", "worker"],
            ),
            "bytes_sent": CounterMetricFamily(
                "wirecat_bytes_sent",
                "Bytes written to stream connections through the event loop, per service",
                labels=["service", "worker"],
            ),
        }
        refused = CounterMetricFamily(
            "wirecat_connections_refused",
            "Stream connections refused before any byte was read, per service and reason",
            labels=["service", "reason", "worker"],
        )
        for (service, name), value in sorted(per_service.items()):
            if name in families:
                families[name].add_metric([service, worker], value)
            elif name.startswith("refused_"):
                refused.add_metric([service, name.removeprefix("refused_"), worker], value)
        yield from families.values()
        yield refused
        for name, read in sorted(ctx.gauges.items()):
            g = GaugeMetricFamily(
                f"wirecat_{_NAME.sub('_', name)}", f"wirecat {name}", labels=["worker"]
            )
            g.add_metric([worker], read())
            yield g
        for name, value in sorted(ctx.metrics.items()):
            family = CounterMetricFamily(
                f"wirecat_{_NAME.sub('_', name)}", f"wirecat counter {name}", labels=["worker"]
            )
            family.add_metric([worker], value)
            yield family


def exposition(ctx: ServerContext, worker: int = 0) -> bytes:
    """Return ``ctx``'s counters in the Prometheus text format (version 0.0.4), UTF-8."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ContextCollector(ctx, worker))
    return generate_latest(registry)


class _MetricsHandler(StreamHandler):
    def __init__(self, ctx: ServerContext, service: MetricsService) -> None:
        super().__init__(ctx, service)
        self.worker = service.worker
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)

    def on_data(self, data: bytes) -> None:
        self.http.receive_data(data)
        self._advance()

    def on_eof(self) -> bool:
        self.http.receive_data(b"")
        self._advance()
        return False

    def _advance(self) -> None:
        try:
            event = self.http.next_event()
        except h11.RemoteProtocolError:
            self._respond(400, b"bad request\n")
            return
        if isinstance(event, h11.Request):
            if event.method not in (b"GET", b"HEAD"):
                self._respond(405, b"method not allowed\n", head=False, allow=True)
            elif event.target.split(b"?", 1)[0] != b"/metrics":
                self._respond(404, b"not found: try /metrics\n", head=event.method == b"HEAD")
            else:
                body = exposition(self.ctx, self.worker)
                self._respond(200, body, head=event.method == b"HEAD", metrics=True)

    def _respond(
        self,
        status: int,
        body: bytes,
        *,
        head: bool = False,
        allow: bool = False,
        metrics: bool = False,
    ) -> None:
        if self.closing:
            return
        ctype = CONTENT_TYPE if metrics else "text/plain; charset=utf-8"
        headers = [
            ("content-type", ctype),
            ("content-length", str(len(body))),
            ("connection", "close"),
            ("x-content-type-options", "nosniff"),
        ]
        if allow:
            headers.append(("allow", "GET, HEAD"))
        try:
            response = h11.Response(status_code=status, headers=headers, reason=_REASONS[status])
            out = self.http.send(response) or b""
            if not head:
                out += self.http.send(h11.Data(data=body)) or b""
            out += self.http.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:  # e.g. the request was never complete: answer raw
            reason = _REASONS[status].decode()
            out = f"HTTP/1.1 {status} {reason}\r\nconnection: close\r\n\r\n".encode()
        self.write(out)
        self.close("answered")


def worker_endpoint(ep: Endpoint, worker: int) -> Endpoint:
    """The metrics listener of worker process ``worker`` for the configured ``ep``.

    Worker 0 uses ``ep``; worker ``i`` uses port ``ep.port + i`` (port 0 stays 0: each
    worker gets its own port from the OS), or for a Unix socket ``PATH.i``. Each worker then
    exposes its own counters; a scraper lists every worker's address as a target.

    Raises:
        ConfigError: ``ep.port + worker`` is past 65535.
    """
    if worker == 0:
        return ep
    if ep.is_inet:
        port = ep.port or 0
        if port and port + worker > 65535:
            raise ConfigError(
                f"metrics: {ep} plus one port per worker passes 65535", field="metrics"
            )
        return dataclasses.replace(ep, port=port + worker if port else 0)
    return dataclasses.replace(ep, path=f"{ep.path}.{worker}")


class MetricsService(Service):
    """Serve ``GET /metrics`` (Prometheus text format) for the server it runs in.

    Args:
        endpoints: stream endpoints (tcp, tls, unix); keep them on loopback or a private
            network: the counters tell about the server's load.
        worker: the worker process index, as the ``worker`` label.
        limits: per-service limits (default: the server's, with a 10 s idle timeout).
    """

    name = "metrics"
    accepts_proxy = False

    def __init__(
        self, endpoints: Sequence[Endpoint], *, worker: int = 0, limits: Limits | None = None
    ) -> None:
        super().__init__(endpoints, limits=limits)
        self.worker = worker

    def stream_handler(self, ctx: ServerContext) -> StreamHandler:
        return _MetricsHandler(ctx, self)
