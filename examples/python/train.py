#!/usr/bin/env python3
"""Send one training job to an infermq fleet; print each epoch's progress and the result.

    pip install pika
    python3 examples/python/train.py --job examples/jobs/iris-inline.json

Publishes to `<prefix>.train` (persistent, `mandatory`, confirms, `reply_to` an exclusive
queue). Messages with header `x-event: progress` are printed as they come; the one with
`x-event: result` (or an error result, header `x-error-code`) ends the wait. Exit status: 0
result, 1 error result, 2 refused by the broker, 3 no answer in time. Same environment as
predict.py (AMQP_URL, INFERMQ__BROKER__PREFIX).
"""

import argparse
import json
import os
import sys

import pika

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from predict import DEFAULT_URL, Fleet  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", default="-", help="training job (JSON file, '-' = stdin)")
    parser.add_argument("--timeout-s", type=float, default=600)
    args = parser.parse_args()

    url = os.environ.get("AMQP_URL", DEFAULT_URL)
    prefix = os.environ.get("INFERMQ__BROKER__PREFIX", "infermq")
    body = sys.stdin.buffer.read() if args.job == "-" else open(args.job, "rb").read()
    fleet = Fleet(url)
    try:
        correlation_id = fleet.publish(prefix + ".train", body)
    except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as error:
        print("the broker refused the job: %r (is a worker with training enabled running?)"
              % (error,), file=sys.stderr)
        return 2
    for properties, answer in fleet.replies(correlation_id, args.timeout_s):
        headers = properties.headers or {}
        event = headers.get("x-event")
        if isinstance(event, bytes):
            event = event.decode()
        if event == "progress":
            print("progress: " + answer.decode(), flush=True)
            continue
        print("%s: %s" % (event or "error", answer.decode()))
        fleet.close()
        return 1 if "x-error-code" in headers else 0
    print("no result within %s s" % args.timeout_s, file=sys.stderr)
    fleet.close()
    return 3


if __name__ == "__main__":
    sys.exit(main())
