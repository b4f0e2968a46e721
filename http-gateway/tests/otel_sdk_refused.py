"""Sends one OTLP/HTTP request with many records logdist must refuse, through Python's `logging`
and the OpenTelemetry Python SDK's own exporter, as an instrumented application would. Run by
http-gateway/tests/pipeline.rs.

    python otel_sdk_refused.py <base-url> <refused> <accepted> [<refused> <accepted> ...]

For each pair, one LoggerProvider logs `refused` records at a level the SDK sends without a
severity number and with the text LOUD (a custom Python level below 10), which logdist cannot
map, and `accepted` INFO records spread among them. The batch processor is sized so that all of
them leave in one export request. Exits 0 only if every export was one request that succeeded;
prints a JSON summary with the size of each export.
"""

import json
import logging
import sys
import threading

from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.resources import Resource

LOUD = 3
logging.addLevelName(LOUD, "LOUD")


class RecordingExporter(LogRecordExporter):
    """The SDK's OTLP/HTTP (protobuf) exporter, with each export's size and result kept."""

    def __init__(self, endpoint):
        self.inner = OTLPLogExporter(endpoint=endpoint, timeout=60)
        self.lock = threading.Lock()
        self.exports = []

    def export(self, batch):
        result = self.inner.export(batch)
        with self.lock:
            self.exports.append((len(batch), result == LogRecordExportResult.SUCCESS))
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis=30000):
        return self.inner.force_flush(timeout_millis)


def send(endpoint, refused, accepted, n):
    exporter = RecordingExporter(endpoint)
    total = refused + accepted
    provider = LoggerProvider(resource=Resource.create({"service.name": "refusals"}))
    provider.add_log_record_processor(
        BatchLogRecordProcessor(
            exporter,
            max_export_batch_size=total,
            max_queue_size=total,
            schedule_delay_millis=600_000,
        )
    )
    logger = logging.getLogger(f"refusals.{n}")
    logger.setLevel(LOUD)
    logger.propagate = False
    logger.addHandler(LoggingHandler(level=LOUD, logger_provider=provider))
    every = max(1, refused // max(1, accepted))
    good = 0
    for i in range(refused):
        if good < accepted and i % every == 0:
            logger.info("good %d", good)
            good += 1
        logger.log(LOUD, "bad %d", i)
    while good < accepted:
        logger.info("good %d", good)
        good += 1
    provider.shutdown()  # exports what is queued: one request
    return exporter.exports


def main():
    base = sys.argv[1]
    counts = [int(a) for a in sys.argv[2:]]
    endpoint = f"{base}/v1/logs"
    exports = []
    for n, (refused, accepted) in enumerate(zip(counts[::2], counts[1::2])):
        exports.append(send(endpoint, refused, accepted, n))
    print(json.dumps({"exports": exports}))
    expected = [[[r + a, True]] for r, a in zip(counts[::2], counts[1::2])]
    sys.exit(0 if json.loads(json.dumps(exports)) == expected else 1)


if __name__ == "__main__":
    main()
