#!/usr/bin/env python3
"""Send one KServe v2 prediction job to an infermq fleet and print the result.

    pip install pika
    python3 examples/python/predict.py --model iris --input body.json

Publishes to the default exchange with routing key `<prefix>.predict.<model>`, persistent,
`mandatory`, with publisher confirms, `reply_to` an exclusive server-named queue and a fresh
`correlation_id`; then waits on that queue for the answer with the same `correlation_id`.
Prints the result body (JSON results as they arrive; binary results decoded to JSON) on stdout,
and the result's headers on stderr. Exit status: 0 result, 1 error result, 2 returned/refused
by the broker, 3 no answer in time.

Environment: AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/%2f), INFERMQ__BROKER__PREFIX
(default infermq), as for the worker.
"""

import argparse
import json
import os
import struct
import sys
import time
import uuid

import pika

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"
BINARY_HEADER = "inference-header-content-length"
FIXED_SIZES = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2,
               "UINT32": 4, "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8}
STRUCT_CODES = {"BOOL": "?", "UINT8": "B", "INT8": "b", "UINT16": "H", "INT16": "h",
                "FP16": "e", "UINT32": "I", "INT32": "i", "FP32": "f", "UINT64": "Q",
                "INT64": "q", "FP64": "d"}


def decode_binary_tensor(datatype, raw):
    """Elements of one binary tensor: little-endian fixed-size values, or BYTES framing."""
    if datatype == "BYTES":
        out, i = [], 0
        while i < len(raw):
            (n,) = struct.unpack_from("<I", raw, i)
            out.append(raw[i + 4:i + 4 + n].decode("utf-8", "replace"))
            i += 4 + n
        return out
    count = len(raw) // FIXED_SIZES[datatype]
    return list(struct.unpack("<%d%s" % (count, STRUCT_CODES[datatype]), raw))


def decode_result(body, header_len):
    """A result body as a dict; binary outputs get their `data` filled in from the tail."""
    if header_len is None:
        return json.loads(body)
    result = json.loads(body[:header_len])
    offset = header_len
    for output in result.get("outputs", []):
        size = output.get("parameters", {}).get("binary_data_size")
        if size is not None:
            output["data"] = decode_binary_tensor(output["datatype"], body[offset:offset + size])
            offset += size
    return result


class Fleet:
    """One connection, a confirm-mode channel, and an exclusive reply queue."""

    def __init__(self, url):
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        declared = self.channel.queue_declare(queue="", exclusive=True, auto_delete=True)
        self.reply_queue = declared.method.queue

    def publish(self, queue, body, headers=None, content_type="application/json",
                correlation_id=None, expiration=None):
        """Publishes one job; raises pika's UnroutableError / NackError when refused."""
        correlation_id = correlation_id or str(uuid.uuid4())
        properties = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent,
            content_type=content_type,
            reply_to=self.reply_queue,
            correlation_id=correlation_id,
            message_id=correlation_id,
            timestamp=int(time.time()),
            expiration=expiration,
            headers=headers or {},
        )
        self.channel.basic_publish(exchange="", routing_key=queue, body=body,
                                   properties=properties, mandatory=True)
        return correlation_id

    def replies(self, correlation_id, timeout_s):
        """Yields (properties, body) of answers with `correlation_id` until `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        for method, properties, body in self.channel.consume(
                self.reply_queue, auto_ack=True, inactivity_timeout=0.5):
            if method is not None and properties.correlation_id == correlation_id:
                yield properties, body
            if time.monotonic() > deadline:
                return

    def close(self):
        self.connection.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", default="-", help="request body (JSON file, '-' = stdin)")
    parser.add_argument("--version", help="x-model-version header")
    parser.add_argument("--deadline-ms", type=int,
                        help="x-deadline-ms = now + this many milliseconds")
    parser.add_argument("--timeout-s", type=float, default=30)
    args = parser.parse_args()

    url = os.environ.get("AMQP_URL", DEFAULT_URL)
    prefix = os.environ.get("INFERMQ__BROKER__PREFIX", "infermq")
    body = sys.stdin.buffer.read() if args.input == "-" else open(args.input, "rb").read()
    headers = {}
    if args.version:
        headers["x-model-version"] = args.version
    if args.deadline_ms is not None:
        headers["x-deadline-ms"] = int(time.time() * 1000) + args.deadline_ms

    fleet = Fleet(url)
    queue = "%s.predict.%s" % (prefix, args.model)
    try:
        correlation_id = fleet.publish(queue, body, headers)
    except pika.exceptions.UnroutableError:
        print("no queue %s: no worker serves model %r (the broker returned the job)"
              % (queue, args.model), file=sys.stderr)
        return 2
    except pika.exceptions.NackError:
        print("the broker refused the job (nack)", file=sys.stderr)
        return 2
    for properties, answer in fleet.replies(correlation_id, args.timeout_s):
        result_headers = properties.headers or {}
        print("headers: %s" % json.dumps(result_headers, default=str), file=sys.stderr)
        header_len = result_headers.get(BINARY_HEADER)
        result = decode_result(answer, None if header_len is None else int(header_len))
        print(json.dumps(result))
        fleet.close()
        return 1 if "x-error-code" in result_headers else 0
    print("no answer within %s s" % args.timeout_s, file=sys.stderr)
    fleet.close()
    return 3


if __name__ == "__main__":
    sys.exit(main())
