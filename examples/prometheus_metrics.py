"""plait's OpenTelemetry metrics, scraped by Prometheus: the recipe, run on ``memory://``.

    python examples/prometheus_metrics.py

plait records its metrics through the OpenTelemetry API on the meter provider it is given.
The OpenTelemetry Prometheus exporter turns them into a ``/metrics`` endpoint: a
``PrometheusMetricReader`` on the ``MeterProvider``, and ``prometheus_client``'s HTTP server.
This script starts both on a free port, runs a few workflows, scrapes the endpoint once and
prints the plait series.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.request

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server
from pydantic import BaseModel

from plait.providers.redis import RedisWorkflowProvider
from plait.workflows import StepContext, Workflow, WorkflowConsumer


class Ping(BaseModel):
    n: int


ping = Workflow("ping", input=Ping).step("pong")
consumer: WorkflowConsumer[Ping, None] = WorkflowConsumer(ping)


@consumer.step("pong")
async def pong(ctx: StepContext[Ping]) -> int:
    return ctx.input.n


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def main() -> None:
    # 1. the exporter: a reader on the meter provider plait is given, and the HTTP endpoint
    meters = MeterProvider(metric_readers=[PrometheusMetricReader()])
    port = free_port()
    start_http_server(port, addr="127.0.0.1")

    # 2. plait, with that meter provider (or set it globally with metrics.set_meter_provider)
    workflows = RedisWorkflowProvider.from_url("memory://", meter_provider=meters)
    workflows.register(consumer)
    async with workflows:
        for n in range(3):
            await (await workflows.execute(ping, Ping(n=n))).result(timeout=10)

        # 3. what Prometheus scrapes from http://127.0.0.1:PORT/metrics
        url = f"http://127.0.0.1:{port}/metrics"
        scraped = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    for line in scraped.decode().splitlines():
        if line.startswith("plait_") and "_bucket{" not in line:
            print(line)
    meters.shutdown()


asyncio.run(main())
