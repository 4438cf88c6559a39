#!/usr/bin/env bash
# Deletes every queue and exchange whose name starts with PREFIX (e.g. `test-`, `bench123`):
# benchmark and test runs use random prefixes, and quorum queues left behind slow the broker.
# Usage: scripts/delete-prefix.sh PREFIX
set -uo pipefail
prefix=${1:?usage: delete-prefix.sh PREFIX}
[ "$prefix" = infermq ] && { echo "refusing to delete the default prefix" >&2; exit 1; }
timeout 120 rabbitmqctl list_queues name -q 2>/dev/null | grep "^$prefix" | while read -r q; do
  timeout 30 rabbitmqctl delete_queue "$q" </dev/null >/dev/null 2>&1 || true
done
timeout 60 rabbitmqctl list_exchanges name -q 2>/dev/null | grep "^$prefix" | while read -r x; do
  timeout 30 rabbitmqctl eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$x\">>), false, <<\"cleanup\">>)." </dev/null >/dev/null 2>&1 || true
done
exit 0
