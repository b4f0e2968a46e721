"""Sends log records through Python's `logging` and the OpenTelemetry Python SDK to logdist's
OTLP/HTTP endpoint, as an instrumented application would. Run by http-gateway/tests/pipeline.rs.

    python otel_sdk_logs.py <base-url> <records per service, level and encoding>

Three services (one LoggerProvider each, `service.name` checkout / payments / search) log
`n` records at each of six levels, once through the SDK's own OTLP/HTTP exporter (protobuf)
and once as OTLP/JSON: the Python exporter speaks only protobuf, so the JSON exporter below
encodes each batch with the same SDK encoder and writes it with protobuf's `json_format`
(integer enums, as OTLP/JSON requires). Batches of 5 keep the routing error small. Then a
malformed protobuf body must be answered 400 with a `google.rpc.Status`.

Exits 0 only if every export succeeded; prints a JSON summary.
"""

import json
import logging
import sys
import threading

import requests
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.resources import Resource

SERVICES = ["checkout", "payments", "search"]
# Python levels; below 10 the SDK sends no severity number, so TRACE travels as its text.
TRACE = 5
logging.addLevelName(TRACE, "TRACE")
LEVELS = [TRACE, logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL]
BATCH = 5


class Tally:
    """Export results, counted across the exporters' worker threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.exported = 0
        self.failed = 0

    def add(self, result, n):
        with self.lock:
            if result == LogRecordExportResult.SUCCESS:
                self.exported += n
            else:
                self.failed += n


class CountingExporter(LogRecordExporter):
    """The SDK's OTLP/HTTP (protobuf) exporter, with its results counted."""

    def __init__(self, endpoint, tally):
        self.inner = OTLPLogExporter(endpoint=endpoint, timeout=30)
        self.tally = tally

    def export(self, batch):
        result = self.inner.export(batch)
        self.tally.add(result, len(batch))
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis=30000):
        return self.inner.force_flush(timeout_millis)


class JsonExporter(LogRecordExporter):
    """OTLP/JSON over HTTP: the SDK's encoder, protobuf's JSON mapping."""

    def __init__(self, endpoint, tally):
        self.endpoint = endpoint
        self.session = requests.Session()
        self.tally = tally

    def export(self, batch):
        body = json_format.MessageToJson(encode_logs(batch), use_integers_for_enums=True)
        result = LogRecordExportResult.FAILURE
        for _ in range(5):  # the retryable answers only, as the SDK exporter does
            r = self.session.post(
                self.endpoint, data=body, headers={"Content-Type": "application/json"}, timeout=30
            )
            if r.status_code == 200:
                answer = json_format.Parse(r.text, logs_service_pb2.ExportLogsServiceResponse())
                if not answer.HasField("partial_success"):
                    result = LogRecordExportResult.SUCCESS
                break
            if r.status_code not in (429, 502, 503, 504):
                break
        self.tally.add(result, len(batch))
        return result

    def shutdown(self):
        self.session.close()

    def force_flush(self, timeout_millis=30000):
        return True


def send(endpoint, n, exporter_class, tally):
    providers, loggers = [], []
    for service in SERVICES:
        provider = LoggerProvider(resource=Resource.create({"service.name": service}))
        provider.add_log_record_processor(
            BatchLogRecordProcessor(
                exporter_class(endpoint, tally),
                max_export_batch_size=BATCH,
                max_queue_size=len(LEVELS) * n + BATCH,
                schedule_delay_millis=50,
            )
        )
        logger = logging.getLogger(f"{service}.{exporter_class.__name__}")
        logger.setLevel(TRACE)
        logger.propagate = False
        logger.addHandler(LoggingHandler(level=TRACE, logger_provider=provider))
        providers.append(provider)
        loggers.append(logger)
    for i in range(n):
        for level in LEVELS:
            for logger in loggers:
                logger.log(level, "order %d: %s", i, logging.getLevelName(level), extra={"i": i})
    for provider in providers:
        provider.shutdown()  # flushes what is queued


def main():
    base, n = sys.argv[1], int(sys.argv[2])
    endpoint = f"{base}/v1/logs"
    tally = Tally()
    send(endpoint, n, CountingExporter, tally)
    send(endpoint, n, JsonExporter, tally)

    r = requests.post(
        endpoint,
        data=b"\x0a\xff\xff\xff\xff not an ExportLogsServiceRequest",
        headers={"Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    status = status_pb2.Status()
    status.ParseFromString(r.content)
    summary = {
        "exported": tally.exported,
        "failed": tally.failed,
        "malformed_status": r.status_code,
        "malformed_content_type": r.headers.get("Content-Type"),
        "malformed_message": status.message,
    }
    print(json.dumps(summary))
    ok = (
        tally.failed == 0
        and tally.exported == 2 * len(SERVICES) * len(LEVELS) * n
        and r.status_code == 400
        and r.headers.get("Content-Type") == "application/x-protobuf"
        and status.message
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
