#!/usr/bin/env python3
"""The KServe v2 binary tensor extension over AMQP, byte by byte, against the `mixed` model.

    pip install pika
    python3 examples/python/binary.py

Builds a job whose two inputs (INT64 `ids`, BOOL `mask`, shape [2, 4]) travel as raw
little-endian bytes after the JSON header, asks for every output back in binary, prints the
request's and the result's framing, and decodes the result. Same environment as predict.py.
"""

import json
import os
import struct
import sys

import pika

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from predict import BINARY_HEADER, DEFAULT_URL, Fleet, decode_result  # noqa: E402


def build_request():
    ids = [1, 2, 3, 4, 10, 20, 30, 40]
    mask = [True, False, True, False, True, True, True, True]
    ids_bytes = struct.pack("<8q", *ids)      # INT64: 8 bytes each, little-endian
    mask_bytes = bytes(int(m) for m in mask)  # BOOL: 1 byte each, 0 or 1
    header = {
        "id": "bin-1",
        "inputs": [
            {"name": "ids", "datatype": "INT64", "shape": [2, 4],
             "parameters": {"binary_data_size": len(ids_bytes)}},
            {"name": "mask", "datatype": "BOOL", "shape": [2, 4],
             "parameters": {"binary_data_size": len(mask_bytes)}},
        ],
        "parameters": {"binary_data_output": True},
    }
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    return header_bytes, header_bytes + ids_bytes + mask_bytes


def describe(label, body, header_len):
    print("%s: %d bytes, %s = %d" % (label, len(body), BINARY_HEADER, header_len))
    print("  [0, %d) JSON header: %s" % (header_len, body[:header_len].decode()))
    print("  [%d, %d) binary: %s" % (header_len, len(body), body[header_len:].hex(" ")))


def main():
    url = os.environ.get("AMQP_URL", DEFAULT_URL)
    prefix = os.environ.get("INFERMQ__BROKER__PREFIX", "infermq")
    header, body = build_request()
    describe("request", body, len(header))
    fleet = Fleet(url)
    try:
        correlation_id = fleet.publish("%s.predict.mixed" % prefix, body,
                                       headers={BINARY_HEADER: len(header)},
                                       content_type="application/octet-stream")
    except pika.exceptions.UnroutableError:
        print("no worker serves model 'mixed'", file=sys.stderr)
        return 2
    for properties, answer in fleet.replies(correlation_id, 30):
        headers = properties.headers or {}
        if BINARY_HEADER in headers:
            describe("result", answer, int(headers[BINARY_HEADER]))
            print("decoded:", json.dumps(decode_result(answer, int(headers[BINARY_HEADER]))))
        else:
            print("result (JSON):", answer.decode())
        fleet.close()
        return 1 if "x-error-code" in headers else 0
    fleet.close()
    print("no answer", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
