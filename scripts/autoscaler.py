#!/usr/bin/env python3
"""KEDA and the Kubernetes HPA as their documentation describes them, as pure functions of time.

scripts/fleet-sim.py feeds it the metric of each trigger of a ScaledObject and applies the replica
counts it returns; `python3 scripts/autoscaler.py` runs its unit tests (tests/fleet_sim.rs does).
Nothing here does I/O: every call takes `now` (seconds) as an argument.

KEDA (https://keda.sh/docs/2.17/concepts/scaling-deployments/ and
https://keda.sh/docs/latest/reference/scaledobject-spec/):
- every `pollingInterval` (default 30 s) KEDA reads each trigger; a trigger is active when its
  metric is above its activation threshold (`activationThreshold` for `prometheus`,
  `activationValue` for `rabbitmq`; default 0). KEDA itself only moves between 0 and
  max(minReplicaCount, 1): at 0 replicas and any trigger active it scales to that; with no trigger
  active for `cooldownPeriod` (default 300 s) since the last active poll and minReplicaCount 0 it
  scales to 0. From 1 to N the HPA it creates decides, with minReplicas = max(minReplicaCount, 1).
- each trigger is one external metric of the HPA, `metricType` AverageValue by default: the target
  is `threshold` (`prometheus`) or `value` (`rabbitmq`, `QueueLength`: the ready messages a passive
  queue.declare reports with `protocol: amqp`).

The HPA (https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/, "Algorithm
details" and "Configurable scaling behavior"; the controller's horizontal.go):
- every sync period (15 s, --horizontal-pod-autoscaler-sync-period) it computes one proposal per
  metric and takes the largest. AverageValue: ratio = metric / (target x current replicas); within
  the tolerance 0.1 of 1 the proposal is the current count, else ceil(metric / target). Value:
  ceil(current x metric / target), with the same tolerance.
- stabilization: the recommendation is kept between the lowest recommendation of the scale-up
  window (default 0 s) and the highest of the scale-down window (default 300 s), both including
  the current one.
- rate: for each policy of the direction, the replicas at the start of its `periodSeconds` (the
  current count less the changes made within the period) plus `value` pods, or times
  (1 + value/100) rounded up (scale-down: times (1 - value/100) rounded down); `selectPolicy` Max
  (default) takes the policy allowing the largest change, Min the smallest, Disabled none.
  Defaults: up, stabilization 0 and max(100 % , 4 pods) per 15 s; down, stabilization 300 s and
  100 % per 15 s. The result is kept within [minReplicas, maxReplicas].

Durations of the ScaledObject may be divided by a time scale (`TimeScale`), so that a profile of
minutes stands for one of a quarter hour; the sync period is divided the same way.
"""
import math
import re
import unittest

HPA_SYNC_S = 15.0
TOLERANCE = 0.1
DEFAULT_UP = {"stabilizationWindowSeconds": 0, "selectPolicy": "Max",
              "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15},
                           {"type": "Pods", "value": 4, "periodSeconds": 15}]}
DEFAULT_DOWN = {"stabilizationWindowSeconds": 300, "selectPolicy": "Max",
                "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}


class Trigger:
    """One trigger of a ScaledObject: its type, target, activation threshold and metric type."""

    def __init__(self, spec):
        self.type = spec["type"]
        self.meta = dict(spec.get("metadata") or {})
        self.metric_type = spec.get("metricType", "AverageValue")
        if self.type == "prometheus":
            self.target = float(self.meta["threshold"])
            self.activation = float(self.meta.get("activationThreshold", 0))
        elif self.type == "rabbitmq":
            if self.meta.get("mode", "QueueLength") != "QueueLength":
                raise ValueError("rabbitmq trigger: only mode QueueLength is simulated")
            self.target = float(self.meta["value"])
            self.activation = float(self.meta.get("activationValue", 0))
        else:
            raise ValueError("trigger type %r is not simulated" % self.type)
        if self.metric_type not in ("AverageValue", "Value"):
            raise ValueError("metricType %r is not simulated" % self.metric_type)

    def active(self, metric):
        return metric is not None and metric > self.activation

    def proposal(self, metric, current):
        """The HPA's replica count for this metric (None when the metric could not be read)."""
        if metric is None or current <= 0:
            return None
        if self.metric_type == "AverageValue":
            ratio = metric / (self.target * current)
            return current if abs(1.0 - ratio) <= TOLERANCE else math.ceil(metric / self.target)
        ratio = metric / self.target
        return current if abs(1.0 - ratio) <= TOLERANCE else math.ceil(ratio * current)


class TimeScale:
    """Divides every duration of the manifest (and PromQL range selectors) by `factor`."""

    def __init__(self, factor=1.0):
        self.factor = float(factor)

    def s(self, seconds):
        return float(seconds) / self.factor

    def promql(self, query):
        """`[1m]` -> `[20s]` at factor 3; subquery steps too. Never below one second."""
        units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}

        def one(m):
            secs = float(m.group(1)) * units[m.group(2)] / self.factor
            return "%s%ds" % (m.group(0)[0], max(1, round(secs)))
        return re.sub(r"[\[:](\d+(?:\.\d+)?)(ms|s|m|h)(?=[\]:])", one, query)


def rules(direction, behavior):
    default = DEFAULT_UP if direction == "scaleUp" else DEFAULT_DOWN
    given = (behavior or {}).get(direction) or {}
    out = dict(default)
    out.update({k: v for k, v in given.items() if v is not None})
    return out


class Hpa:
    """The HPA controller's decision for one target, as of horizontal.go (module docstring)."""

    def __init__(self, min_replicas, max_replicas, behavior, scale=TimeScale()):
        self.min, self.max, self.scale = min_replicas, max_replicas, scale
        self.up, self.down = rules("scaleUp", behavior), rules("scaleDown", behavior)
        self.recommendations = []  # (time, desired)
        self.up_events, self.down_events = [], []  # (time, replicas changed)
        self.sync_s = scale.s(HPA_SYNC_S)

    def _stabilize(self, now, desired, current):
        if not self.recommendations and self.down["stabilizationWindowSeconds"] > 0:
            self.recommendations.append((now, current))
        up_cut = now - self.scale.s(self.up["stabilizationWindowSeconds"])
        down_cut = now - self.scale.s(self.down["stabilizationWindowSeconds"])
        up_rec = down_rec = desired
        for t, r in self.recommendations:
            if t > up_cut:
                up_rec = min(up_rec, r)
            if t > down_cut:
                down_rec = max(down_rec, r)
        keep = min(up_cut, down_cut)
        self.recommendations = [(t, r) for t, r in self.recommendations if t >= keep]
        self.recommendations.append((now, desired))
        return min(max(current, up_rec), down_rec)

    def _changed(self, events, period, now):
        return sum(n for t, n in events if t > now - self.scale.s(period))

    def _limit(self, now, current, scale_up):
        r = self.up if scale_up else self.down
        if r["selectPolicy"] == "Disabled":
            return current
        pick = max if (r["selectPolicy"] == "Max") == scale_up else min
        result = None
        for p in r["policies"]:
            added = self._changed(self.up_events, p["periodSeconds"], now)
            deleted = self._changed(self.down_events, p["periodSeconds"], now)
            start = current - added + deleted
            if p["type"] == "Pods":
                proposed = start + p["value"] if scale_up else start - p["value"]
            elif scale_up:
                proposed = math.ceil(start * (1 + p["value"] / 100.0))
            else:
                proposed = int(start * (1 - p["value"] / 100.0))
            result = proposed if result is None else pick(result, proposed)
        return current if result is None else result

    def sync(self, now, proposals, current):
        """New replica count given each trigger's proposal (None: unreadable) and the current count."""
        if current > self.max:
            desired = self.max
        elif current < self.min:
            desired = self.min
        else:
            valid = [p for p in proposals if p is not None]
            wanted = max(valid) if valid else current
            desired = self._stabilize(now, wanted, current)
            if desired > current:
                limit = max(self._limit(now, current, True), current)
                desired = min(desired, min(self.max, limit))
            elif desired < current:
                limit = min(self._limit(now, current, False), current)
                desired = max(desired, max(self.min, limit))
        if desired > current:
            self.up_events.append((now, desired - current))
        elif desired < current:
            self.down_events.append((now, current - desired))
        return desired


class Keda:
    """KEDA's own loop: activation from zero, scale to zero after the cooldown."""

    def __init__(self, spec, scale=TimeScale()):
        self.min = int(spec.get("minReplicaCount", 0))
        self.max = int(spec.get("maxReplicaCount", 100))
        self.poll_s = scale.s(spec.get("pollingInterval", 30))
        self.cooldown_s = scale.s(spec.get("cooldownPeriod", 300))
        self.last_active = None
        behavior = ((spec.get("advanced") or {}).get("horizontalPodAutoscalerConfig") or {}).get("behavior")
        self.hpa = Hpa(max(self.min, 1), self.max, behavior, scale)

    def poll(self, now, active, current):
        """Replica count after one KEDA poll, given whether any trigger is active."""
        if active:
            self.last_active = now
            return max(self.min, 1) if current == 0 else current
        if current > 0 and self.min == 0 and (
                self.last_active is None or now - self.last_active > self.cooldown_s):
            return 0
        return current


def scaled_object(docs):
    """The ScaledObject's spec among parsed YAML documents."""
    for doc in docs:
        if doc and doc.get("kind") == "ScaledObject":
            return doc["spec"]
    raise ValueError("no ScaledObject in the manifest")


class Tests(unittest.TestCase):
    def test_average_value_proposal_with_tolerance(self):
        t = Trigger({"type": "prometheus", "metadata": {"threshold": "0.5", "query": "x"}})
        self.assertEqual(t.proposal(1.0, 2), 2)      # ratio 1
        self.assertEqual(t.proposal(1.05, 2), 2)     # ratio 1.05: within the tolerance
        self.assertEqual(t.proposal(1.2, 2), 3)      # ceil(1.2 / 0.5)
        self.assertEqual(t.proposal(0.2, 4), 1)
        self.assertIsNone(t.proposal(None, 2))
        self.assertTrue(t.active(0.01))
        self.assertFalse(t.active(0.0))

    def test_rabbitmq_queue_length(self):
        t = Trigger({"type": "rabbitmq", "metadata": {"value": "50", "activationValue": "2"}})
        self.assertEqual(t.proposal(359, 1), 8)
        self.assertFalse(t.active(2))
        self.assertTrue(t.active(3))
        with self.assertRaises(ValueError):
            Trigger({"type": "rabbitmq", "metadata": {"mode": "MessageRate", "value": "1"}})

    def test_default_scale_down_keeps_the_highest_of_300_s(self):
        h = Hpa(1, 10, None)
        self.assertEqual(h.sync(0, [8], 1), 5)        # from 1: max(1 x 2, 1 + 4) within 15 s
        self.assertEqual(h.sync(14, [8], 5), 5)       # the 4 added at t=0 count until t=15
        self.assertEqual(h.sync(15.1, [8], 5), 8)
        self.assertEqual(h.sync(100, [1], 8), 8)      # down: 300 s window
        self.assertEqual(h.sync(316, [1], 8), 1)      # window passed; 100 % per 15 s allows all

    def test_steps_down_and_min_select_policy(self):
        b = {"scaleDown": {"stabilizationWindowSeconds": 30, "policies": [
            {"type": "Percent", "value": 50, "periodSeconds": 30}]}}
        h = Hpa(1, 10, b)
        self.assertEqual(h.sync(0, [8], 8), 8)
        self.assertEqual(h.sync(31, [1], 8), 4)       # half per 30 s
        self.assertEqual(h.sync(46, [1], 4), 4)       # the period's start was 8: 8 x 0.5 = 4
        self.assertEqual(h.sync(62, [1], 4), 2)
        b = {"scaleUp": {"selectPolicy": "Min", "policies": [
            {"type": "Pods", "value": 1, "periodSeconds": 10},
            {"type": "Percent", "value": 100, "periodSeconds": 10}]}}
        h = Hpa(1, 10, b)
        self.assertEqual(h.sync(0, [6], 2), 3)

    def test_scale_up_stabilization_takes_the_lowest(self):
        h = Hpa(1, 10, {"scaleUp": {"stabilizationWindowSeconds": 30}})
        self.assertEqual(h.sync(0, [1], 1), 1)
        self.assertEqual(h.sync(15, [4], 1), 1)       # the lowest of the window is 1
        self.assertEqual(h.sync(31, [4], 1), 4)

    def test_unreadable_metrics_are_skipped(self):
        h = Hpa(1, 10, None)
        self.assertEqual(h.sync(0, [None, 3], 1), 3)
        self.assertEqual(h.sync(20, [None, None], 3), 3)

    def test_keda_activation_and_cooldown(self):
        k = Keda({"minReplicaCount": 0, "maxReplicaCount": 5, "cooldownPeriod": 60})
        self.assertEqual(k.poll(0, False, 0), 0)
        self.assertEqual(k.poll(10, True, 0), 1)
        self.assertEqual(k.poll(20, False, 3), 3)
        self.assertEqual(k.poll(70, False, 3), 3)     # 60 s since the last active poll
        self.assertEqual(k.poll(71, False, 3), 0)
        self.assertEqual(k.hpa.min, 1)

    def test_time_scale(self):
        s = TimeScale(3)
        self.assertEqual(s.promql("rate(x[1m]) + rate(y[30s]) + z[90s:15s]"),
                         "rate(x[20s]) + rate(y[10s]) + z[30s:5s]")
        self.assertAlmostEqual(Keda({"pollingInterval": 15}, s).poll_s, 5)


if __name__ == "__main__":
    unittest.main()
