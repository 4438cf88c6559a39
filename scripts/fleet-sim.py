#!/usr/bin/env python3
"""Fleet simulator: a KEDA ScaledObject applied to real `infermq worker` processes.

Reads the ScaledObject of --manifest (default deploy/kubernetes/keda-scaledobject.yaml, PyYAML),
and evaluates it as KEDA and the HPA would (scripts/autoscaler.py; its docstring cites and
summarises KEDA's and the HPA's documented algorithm): every pollingInterval KEDA reads each
trigger and moves between 0 and 1 replicas on activation; every HPA sync period (15 s) the HPA
turns each trigger's metric into a replica count, takes the largest, and applies the stabilization
windows and scaling policies of `behavior`. A `prometheus` trigger's query runs against a real
Prometheus (Debian's `prometheus`, started here on a free loopback port, scraping every live
worker's /metrics through a file_sd list rewritten as workers start and stop, --scrape-s apart; and
RabbitMQ's rabbitmq_prometheus endpoint when a query names rabbitmq_*); a `rabbitmq` trigger's
queue length is the ready count a passive queue.declare returns (what KEDA reads with
`protocol: amqp`). Queue names in the manifest (a `rabbitmq` trigger's queueName, a quoted
"infermq.…" in a query) have their `infermq.` prefix replaced by this run's.

Workers are real processes (release binary, own INFERMQ__HTTP__LISTEN port, one random prefix, a
temporary repository holding only iris, `broker.prefetch` --prefetch, iris `max_batch_size`
--batch), started when the replica count rises and stopped with SIGTERM, newest first, when it
falls; publisher threads (pika: confirms, mandatory, reply_to, correlation_id) send 1-row iris jobs
on a --profile: `rise` (base 20 s, linear rise 15 s, hold 60 s, fall 15 s, base 60 s), `step`
(base 20 s, peak 60 s, base 60 s), `wave` (a cosine between base and peak, 75 s period, 150 s),
`zero` (idle, a burst, idle past the cooldown, a burst: scale to zero and back), or
`points:T=R,T=R,...` (linear between points). --time-scale S divides every duration of the
manifest, the sync period and PromQL range selectors by S, so a profile of minutes stands for one
S times longer. --set PATH=VALUE overrides a manifest field (e.g. `triggers.1.metadata.value=50`).

Before the profile, one worker is measured alone for --measure-s seconds under a saturating
closed loop: its jobs/s is "one worker's measured rate" and the needed size of each moment is
ceil(rate / that). The JSON (--json) keeps the summary, the targets checked (see
docs/OPERATIONS.md, Autoscaling), the per-window figures (fleet size, needed size, backlog,
p50/p99, arrivals, answers), every KEDA poll and HPA sync, and each cold start's breakdown.

Needs pika, PyYAML, and matplotlib for --png (`python3 -m pip install pika pyyaml matplotlib`).
Example (docs/OPERATIONS.md, Autoscaling):
  python3 scripts/fleet-sim.py --profile rise --time-scale 3 --set triggers.1.metadata.value=50 \\
      --json benches/results/autoscaling/autoscaling-rise-new.json \\
      --png benches/results/autoscaling/autoscaling-rise-new.png
"""
import argparse, json, math, os, queue, random, shutil, signal, socket, subprocess, sys, tempfile
import threading, time, urllib.parse, urllib.request

import pika
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autoscaler import Keda, TimeScale, Trigger, scaled_object  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BODY = '{"id":"%s","inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'


def args_parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--binary", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "infermq"))
    p.add_argument("--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))
    p.add_argument("--manifest", default=os.path.join(ROOT, "deploy", "kubernetes", "keda-scaledobject.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="override a ScaledObject spec field, e.g. maxReplicaCount=8")
    p.add_argument("--time-scale", type=float, default=1.0, help="divide the manifest's durations by this")
    p.add_argument("--profile", default="rise", help="rise, step, wave, zero or points:T=R,...")
    p.add_argument("--base-rate", type=float, default=60, help="jobs/s before and after the peak")
    p.add_argument("--peak-rate", type=float, default=600, help="jobs/s at the peak")
    p.add_argument("--rates-x", type=float, nargs=2, metavar=("BASE", "PEAK"),
                   help="base and peak as multiples of one worker's measured rate (tests)")
    p.add_argument("--backlog-wait-s", type=float,
                   help="set the value of each rabbitmq trigger on a predict queue to one worker's measured "
                        "rate x this (the manifest's own rule for choosing it)")
    p.add_argument("--busy-share", type=float,
                   help="set the threshold of each prometheus trigger on infermq_job_slots to this x the "
                        "slot occupancy measured at saturation (the manifest's own rule for choosing it)")
    p.add_argument("--stretch", type=float, default=1.0, help="multiply the profile's times")
    p.add_argument("--prefetch", type=int, default=1, help="each worker's broker.prefetch")
    p.add_argument("--batch", type=int, default=1, help="iris max_batch_size in the temp repository")
    p.add_argument("--publishers", type=int, default=8, help="publisher threads (one connection each)")
    p.add_argument("--scrape-s", type=float, default=1.0, help="Prometheus scrape interval")
    p.add_argument("--measure-s", type=float, default=10, help="measure one worker first (0: --worker-rate)")
    p.add_argument("--measure-only", action="store_true", help="measure one worker, print, exit")
    p.add_argument("--worker-rate", type=float, help="one worker's jobs/s, when not measured")
    p.add_argument("--scale-down-s", type=float, default=150,
                   help="documented time back to the base size after the fall (manifest seconds)")
    p.add_argument("--drain-s", type=float, default=60, help="wait for answers after the profile")
    p.add_argument("--tail-s", type=float, default=0,
                   help="after the profile, keep scaling (no load) until one worker is left, this long at most")
    p.add_argument("--window-s", type=float, default=5)
    p.add_argument("--json", help="write the summary, targets, windows, polls here")
    p.add_argument("--png", help="draw the plot here")
    return p.parse_args()


# --- profile ------------------------------------------------------------------------------------

class Profile:
    """Arrival rate over time: linear between points; `hold` and `fall_end` name the phases."""

    def __init__(self, points=None, func=None, duration=None, hold=None, fall_end=None):
        self.points, self.func = points, func
        self.duration = duration if duration is not None else points[-1][0]
        self.hold, self.fall_end = hold, fall_end

    def rate(self, t):
        if t < 0 or t >= self.duration:
            return 0.0
        if self.func:
            return self.func(t)
        for (t0, r0), (t1, r1) in zip(self.points, self.points[1:]):
            if t0 <= t < t1:
                return r0 + (r1 - r0) * (t - t0) / (t1 - t0)
        return self.points[-1][1]


def profile_of(a):
    b, p, k = a.base_rate, a.peak_rate, a.stretch
    pts = lambda spec: [(t * k, r) for t, r in spec]
    if a.profile == "rise":
        return Profile(pts([(0, b), (20, b), (35, p), (95, p), (110, b), (170, b)]),
                       hold=(35 * k, 95 * k), fall_end=110 * k)
    if a.profile == "step":
        return Profile(pts([(0, b), (20, b), (20, p), (80, p), (80, b), (140, b)]),
                       hold=(20 * k, 80 * k), fall_end=80 * k)
    if a.profile == "wave":
        period = 75 * k
        return Profile(func=lambda t: b + (p - b) * (1 - math.cos(2 * math.pi * t / period)) / 2,
                       duration=150 * k)
    if a.profile == "zero":
        return Profile(pts([(0, 0), (5, 0), (5, b), (25, b), (25, 0), (100, 0), (100, b), (120, b),
                            (120, 0), (125, 0)]))
    if a.profile.startswith("points:"):
        spec = [tuple(float(x) for x in kv.split("=")) for kv in a.profile[7:].split(",")]
        return Profile(pts(spec))
    sys.exit("unknown --profile %r" % a.profile)


# --- manifest -----------------------------------------------------------------------------------

def load_spec(a):
    with open(a.manifest) as f:
        spec = scaled_object(yaml.safe_load_all(f))
    for item in a.set:
        path, value = item.split("=", 1)
        node, keys = spec, path.split(".")
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        last = keys[-1]
        parsed = yaml.safe_load(value)
        if isinstance(node, list):
            node[int(last)] = parsed
        else:
            node[last] = parsed
    return spec


# --- workers ------------------------------------------------------------------------------------

class Fleet:
    """Worker processes: start on a fresh port, stop with SIGTERM (newest first), reap; keeps the
    file_sd list of live workers for Prometheus and each worker's spawn and ready times."""

    def __init__(self, a, prefix, repo, logdir, sd_path):
        self.a, self.prefix, self.repo, self.logdir, self.sd_path = a, prefix, repo, logdir, sd_path
        self.running, self.stopping, self.started, self.exits = [], [], 0, []
        self.lives = []  # {"port", "spawn", "ready", "stop"}
        self.port = 18600 + random.randrange(0, 300)
        self.write_sd()

    def write_sd(self):
        tmp = self.sd_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump([{"targets": ["127.0.0.1:%d" % port for _, port, _ in self.running]}], f)
        os.replace(tmp, self.sd_path)

    def start(self):
        self.port += 1
        while port_busy(self.port):
            self.port += 1
        env = dict(os.environ, INFERMQ__BROKER__URL=self.a.url, INFERMQ__BROKER__PREFIX=self.prefix,
                   INFERMQ__BROKER__PREFETCH=str(self.a.prefetch),
                   INFERMQ__HTTP__LISTEN="127.0.0.1:%d" % self.port,
                   INFERMQ__REPOSITORY__PATH=self.repo, INFERMQ__TRAINING__ENABLED="false",
                   INFERMQ__RUNTIME__EXECUTION_PROVIDERS="cpu", INFERMQ__LOG__LEVEL="warn")
        env.setdefault("ORT_DYLIB_PATH", os.path.join(ROOT, ".ort/onnxruntime/capi/libonnxruntime.so.1.31.1"))
        log = open(os.path.join(self.logdir, "worker-%d.log" % self.started), "w")
        life = {"port": self.port, "spawn": time.time(), "ready": None, "stop": None}
        proc = subprocess.Popen([self.a.binary, "worker"], cwd=self.logdir, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        self.started += 1
        self.lives.append(life)
        self.running.append((proc, self.port, life))
        threading.Thread(target=watch_ready, args=(life, proc), daemon=True).start()
        self.write_sd()
        return life

    def stop_one(self):
        proc, _, life = self.running.pop()
        life["stop"] = time.time()
        proc.send_signal(signal.SIGTERM)
        self.stopping.append(proc)
        self.write_sd()

    def reap(self):
        for proc in [p for p in self.stopping if p.poll() is not None]:
            self.stopping.remove(proc)
            self.exits.append(proc.returncode)
        for r in [r for r in self.running if r[0].poll() is not None]:
            self.running.remove(r)
            r[2]["stop"] = time.time()
            self.exits.append(r[0].returncode)
            print("worker on port %d died with %s" % (r[1], r[0].returncode), file=sys.stderr)
            self.write_sd()

    def scale_to(self, n):
        while len(self.running) < n:
            self.start()
        while len(self.running) > n:
            self.stop_one()

    def stop_all(self, timeout=60):
        while self.running:
            self.stop_one()
        deadline = time.time() + timeout
        while self.stopping and time.time() < deadline:
            self.reap()
            time.sleep(0.2)
        for proc in self.stopping:
            proc.kill()


def port_busy(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def watch_ready(life, proc):
    """Records when the worker's /readyz first answers 200 (model loaded, consuming)."""
    while proc.poll() is None and life["stop"] is None:
        try:
            if http_get("http://127.0.0.1:%d/readyz" % life["port"], 1)[0] == 200:
                life["ready"] = time.time()
                return
        except OSError:
            pass
        time.sleep(0.05)


def wait_ready(lives, deadline):
    while time.time() < deadline:
        if all(l["ready"] for l in lives):
            return True
        time.sleep(0.1)
    return False


# --- Prometheus ---------------------------------------------------------------------------------

class Prometheus:
    """Debian's prometheus on a free loopback port, scraping the file_sd list every --scrape-s."""

    def __init__(self, a, tmp, sd_path, broker):
        self.port = free_port()
        scrape = "%gs" % a.scrape_s
        conf = {"global": {"scrape_interval": scrape, "evaluation_interval": scrape},
                "scrape_configs": [{"job_name": "infermq", "file_sd_configs": [
                    {"files": [sd_path], "refresh_interval": "1s"}]}]}
        if broker:
            conf["scrape_configs"].append({
                "job_name": "rabbitmq-queues", "metrics_path": "/metrics/detailed",
                "params": {"family": ["queue_coarse_metrics", "queue_consumer_count"]},
                "static_configs": [{"targets": ["127.0.0.1:15692"]}]})
        path = os.path.join(tmp, "prometheus.yml")
        with open(path, "w") as f:
            yaml.safe_dump(conf, f)
        log = open(os.path.join(tmp, "prometheus.log"), "w")
        self.proc = subprocess.Popen(
            ["prometheus", "--config.file=" + path, "--storage.tsdb.path=" + os.path.join(tmp, "tsdb"),
             "--web.listen-address=127.0.0.1:%d" % self.port, "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if http_get("http://127.0.0.1:%d/-/ready" % self.port)[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        sys.exit("prometheus did not start (log: %s)" % tmp)

    def query(self, expr):
        """The one value of an instant query; 0 when empty (KEDA's ignoreNullValues); None on error."""
        url = "http://127.0.0.1:%d/api/v1/query?query=%s" % (self.port, urllib.parse.quote(expr))
        try:
            body = json.loads(http_get(url, 5)[1])
        except (OSError, ValueError):
            return None
        result = body.get("data", {}).get("result", [])
        if body.get("status") != "success" or len(result) > 1:
            return None
        return float(result[0]["value"][1]) if result else 0.0

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


# --- jobs ---------------------------------------------------------------------------------------

def connect(url):
    params = pika.URLParameters(url)
    params.heartbeat = 0  # threads may sit in a queue.get() longer than a heartbeat
    return pika.BlockingConnection(params)


class Answers(threading.Thread):
    """Consumes the exclusive reply queue; records first answer time and duplicates by id."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.conn = connect(url)
        self.ch = self.conn.channel()
        self.reply_to = self.ch.queue_declare("", exclusive=True, auto_delete=True).method.queue
        self.first, self.dups, self.errors, self.unexpected = {}, 0, 0, 0
        self.sent = {}  # id -> publish time, filled by the publishers
        self.lock = threading.Lock()
        self.stop = False

    def on_msg(self, ch, method, props, body):
        now = time.time()
        cid = props.correlation_id
        with self.lock:
            if cid not in self.sent:
                self.unexpected += 1
            elif cid in self.first:
                self.dups += 1
            else:
                self.first[cid] = now
                if b'"error"' in body[:200]:
                    self.errors += 1

    def run(self):
        self.ch.basic_consume(self.reply_to, self.on_msg, auto_ack=True)
        while not self.stop:
            self.conn.process_data_events(time_limit=0.2)


def publisher(url, qname, answers, jobs, failed):
    conn = connect(url)
    ch = conn.channel()
    ch.confirm_delivery()
    while True:
        jid = jobs.get()
        if jid is None:
            break
        props = pika.BasicProperties(delivery_mode=2, correlation_id=jid, reply_to=answers.reply_to,
                                     content_type="application/json")
        with answers.lock:
            answers.sent[jid] = time.time()
        try:
            ch.basic_publish("", qname, (BODY % jid).encode(), props, mandatory=True)
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError):
            with answers.lock:
                del answers.sent[jid]
            failed.append(jid)
    conn.close()


def scheduler(profile, jobs, t0, first_id):
    """Puts job ids on `jobs` as the rate profile makes them due (open loop)."""
    due, n, last = 0.0, 0, t0
    end = t0 + profile.duration
    while True:
        now = time.time()
        if now >= end:
            break
        due += profile.rate(now - t0) * (now - last)
        last = now
        while n < int(due):
            jobs.put("j%d" % (first_id + n))
            n += 1
        time.sleep(0.01)


class Broker:
    """Ready counts by passive queue.declare; a missing queue reopens the channel and reads None."""

    def __init__(self, url):
        self.conn = connect(url)
        self.ch = self.conn.channel()

    def ready(self, qname):
        try:
            return self.ch.queue_declare(qname, passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker:
            self.ch = self.conn.channel()
            return None


# --- the scaler ---------------------------------------------------------------------------------

class Scaler:
    """The ScaledObject's triggers read from Prometheus and the broker; KEDA's and the HPA's loops."""

    def __init__(self, spec, scale, prefix, prom, broker):
        self.spec, self.scale, self.prom, self.broker = spec, scale, prom, broker
        self.keda = Keda(spec, scale)
        self.triggers = [Trigger(t) for t in spec["triggers"]]
        for t in self.triggers:
            if t.type == "rabbitmq":
                t.meta["queueName"] = t.meta["queueName"].replace("infermq.", prefix + ".", 1)
            else:  # queue="infermq.predict.iris" in a query names this run's queue
                t.meta["query"] = scale.promql(t.meta["query"]).replace('"infermq.', '"%s.' % prefix)

    def read(self):
        out = []
        for t in self.triggers:
            if t.type == "rabbitmq":
                out.append(self.broker.ready(t.meta["queueName"]))
            else:
                out.append(self.prom.query(t.meta["query"]))
        return out

    def keda_poll(self, now, current):
        metrics = self.read()
        active = any(t.active(m) for t, m in zip(self.triggers, metrics))
        return self.keda.poll(now, active, current), {"metrics": metrics, "active": active}

    def hpa_sync(self, now, current):
        metrics = self.read()
        proposals = [t.proposal(m, current) for t, m in zip(self.triggers, metrics)]
        return self.keda.hpa.sync(now, proposals, current), {"metrics": metrics, "proposals": proposals}


# --- one worker alone ---------------------------------------------------------------------------

def scrape_job_seconds(port):
    try:
        text = http_get("http://127.0.0.1:%d/metrics" % port)[1]
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith('infermq_job_seconds_total{model="iris"}'):
            return float(line.split()[-1])
    return None


def measure(a, fleet, answers, jobs, seconds):
    """One worker under a saturating closed loop: its jobs/s and its slot occupancy."""
    life = fleet.start()
    if not wait_ready([life], time.time() + 60):
        sys.exit("the measured worker was not ready within 60 s")
    n = 0
    t_start = time.time() + 2  # warm up 2 s
    done0 = held0 = None
    while True:
        now = time.time()
        with answers.lock:
            done = len(answers.first)
        if done0 is None and now >= t_start:
            done0, held0, t_start = done, scrape_job_seconds(life["port"]), now
        if done0 is not None and now >= t_start + seconds:
            break
        while n - done < 200:
            jobs.put("m%d" % n)
            n += 1
        time.sleep(0.005)
    elapsed = time.time() - t_start
    held1 = scrape_job_seconds(life["port"])
    rate = (done - done0) / elapsed
    occupancy = (held1 - held0) / elapsed / a.prefetch if held0 is not None and held1 is not None else None
    while True:  # let it finish what was published
        with answers.lock:
            if len(answers.first) >= len(answers.sent):
                break
        time.sleep(0.1)
    fleet.stop_all()
    return {"jobs_per_s": round(rate, 1), "seconds": seconds, "slot_occupancy": occupancy and round(occupancy, 3),
            "cold_start_s": round(life["ready"] - life["spawn"], 3)}


# --- figures ------------------------------------------------------------------------------------

def needed(rate, mu, hpa_min):
    return 0 if rate <= 0 else max(hpa_min, math.ceil(rate / mu))


def windows(a, t0, answers, samples, profile, mu, hpa_min):
    out = []
    pubs = sorted(answers.sent.values())
    items = sorted((t, t - answers.sent[j]) for j, t in answers.first.items())
    end = max([t for t, _ in items] + [time.time()])
    k = 0
    while t0 + k * a.window_s < end:
        lo, hi = t0 + k * a.window_s, t0 + (k + 1) * a.window_s
        lat = sorted(l for t, l in items if lo <= t < hi)
        pub = sum(1 for t in pubs if lo <= t < hi)
        pick = lambda q: round(lat[min(len(lat) - 1, int(math.ceil(q * len(lat))) - 1)] * 1000, 1) if lat else None
        inw = [s for s in samples if lo <= s["t"] + t0 < hi]
        rate = max(profile.rate(k * a.window_s + f * a.window_s) for f in (0, 0.25, 0.5, 0.75, 0.999))
        out.append({"t": round(k * a.window_s, 1), "rate": round(rate, 1), "needed": needed(rate, mu, hpa_min),
                    "published_per_s": pub / a.window_s, "answered_per_s": len(lat) / a.window_s,
                    "p50_ms": pick(0.5), "p99_ms": pick(0.99),
                    "workers": inw[-1]["workers"] if inw else None,
                    "workers_min": min(s["workers"] for s in inw) if inw else None,
                    "workers_max": max(s["workers"] for s in inw) if inw else None,
                    "ready": max(s["ready"] for s in inw) if inw else None})
        k += 1
    return out


def integrate(samples, profile, mu, hpa_min):
    """Worker-seconds and ideal worker-seconds over the profile's duration."""
    spent = ideal = 0.0
    for s, nxt in zip(samples, samples[1:]):
        if s["t"] >= profile.duration:
            break
        dt = min(nxt["t"], profile.duration) - s["t"]
        spent += s["workers"] * dt
        ideal += needed(profile.rate(s["t"]), mu, hpa_min) * dt
    return spent, ideal


def judge(a, profile, rows, samples, summary, mu, hpa_min, scale):
    """The targets of docs/OPERATIONS.md (Autoscaling), each with the figure it is decided on."""
    t = {"none_lost": summary["lost"] == 0, "no_duplicates": summary["duplicates"] == 0,
         "exits_0": all(c == 0 for c in summary["worker_exit_codes"])}
    spent, ideal = integrate(samples, profile, mu, hpa_min)
    summary["worker_seconds"], summary["ideal_worker_seconds"] = round(spent, 1), round(ideal, 1)
    summary["worker_seconds_ratio"] = round(spent / ideal, 3) if ideal else None
    t["worker_seconds_le_1.4x"] = bool(ideal) and spent <= 1.4 * ideal
    if profile.hold:
        h0, h1 = profile.hold
        need = needed(profile.rate((h0 + h1) / 2), mu, hpa_min)
        grown = next((s["t"] for s in samples if h0 <= s["t"] < h1 and s["workers"] >= need), None)
        summary["hold_needed"], summary["grown_at_s"] = need, grown and round(grown - h0, 1)
        if grown is not None:
            after = [s for s in samples if grown <= s["t"] < h1]
            summary["hold_min_workers"] = min(s["workers"] for s in after)
            t["hold_never_under_needed"] = summary["hold_min_workers"] >= need
            p99 = [r["p99_ms"] for r in rows if r["t"] >= grown + a.window_s and r["t"] + a.window_s <= h1]
            summary["hold_p99_max_ms"] = max([p for p in p99 if p is not None], default=None)
            t["hold_p99_le_250ms"] = bool(p99) and all(p is not None and p <= 250 for p in p99)
        else:
            t["hold_never_under_needed"] = t["hold_p99_le_250ms"] = False
    if profile.fall_end is not None:
        base = needed(profile.rate(profile.fall_end + 1), mu, hpa_min)
        back = next((s["t"] for s in samples if s["t"] >= profile.fall_end and s["workers"] <= base
                     and all(q["workers"] <= base for q in samples
                             if s["t"] <= q["t"] < profile.duration)), None)
        summary["back_to_base_s"] = back and round(back - profile.fall_end, 1)
        summary["scale_down_budget_s"] = round(scale.s(a.scale_down_s), 1)
        t["back_to_base_in_time"] = back is not None and back - profile.fall_end <= scale.s(a.scale_down_s)
    return t


def cold_starts(fleet, polls, answers, t0):
    """Each scale from zero: the first waiting job, the activating poll, spawn, ready, first answer."""
    out = []
    sent = sorted((t, j) for j, t in answers.sent.items())
    zero_since = t0
    for p in polls:
        if p["kind"] != "keda":
            continue
        if p["after"] == 0 and p["before"] > 0:
            zero_since = p["t"] + t0
        if p["before"] == 0 and p["after"] > 0:
            at = p["t"] + t0
            life = next((l for l in fleet.lives if l["spawn"] >= at - 0.01), None)
            first = next(((t, j) for t, j in sent if t >= zero_since), None)
            if not life or not first:
                continue
            answered = answers.first.get(first[1])
            r = lambda x, y: None if x is None or y is None else round(x - y, 3)
            out.append({"first_job_published_s": round(first[0] - t0, 2),
                        "waiting_to_activation_s": r(at, first[0]), "activation_to_spawn_s": r(life["spawn"], at),
                        "spawn_to_ready_s": r(life["ready"], life["spawn"]),
                        "ready_to_first_answer_s": r(answered, life["ready"]),
                        "first_job_latency_s": r(answered, first[0])})
    return out


def plot(a, rows, summary, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = [r["t"] for r in rows]
    fig, ax = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    ax[0].plot(t, [r["rate"] for r in rows], ls=":", label="profile jobs/s")
    ax[0].plot(t, [r["published_per_s"] for r in rows], label="published jobs/s")
    ax[0].plot(t, [r["answered_per_s"] for r in rows], label="answered jobs/s")
    ax[0].legend(); ax[0].set_ylabel("jobs/s")
    ax[1].step(t, [r["workers_max"] or 0 for r in rows], where="post", label="workers (max in window)")
    ax[1].step(t, [r["workers_min"] or 0 for r in rows], where="post", label="workers (min in window)")
    ax[1].step(t, [r["needed"] for r in rows], where="post", ls="--", label="needed: ceil(rate / one worker)")
    ax[1].legend(); ax[1].set_ylabel("workers")
    ax[2].plot(t, [r["ready"] or 0 for r in rows]); ax[2].set_ylabel("ready jobs (max)")
    ax[3].plot(t, [r["p50_ms"] for r in rows], label="p50")
    ax[3].plot(t, [r["p99_ms"] for r in rows], label="p99")
    ax[3].axhline(250, color="grey", lw=0.5)
    ax[3].set_yscale("log"); ax[3].legend(); ax[3].set_ylabel("latency ms"); ax[3].set_xlabel("s")
    fig.suptitle("%s, profile %s, time scale %g; one worker %.0f jobs/s\n"
                 "%d jobs, lost %d, duplicates %d; worker-seconds %.0f = %.2f x ideal"
                 % (os.path.basename(a.manifest), a.profile, a.time_scale, summary["worker_rate"],
                    summary["published"], summary["lost"], summary["duplicates"],
                    summary["worker_seconds"], summary["worker_seconds_ratio"] or 0))
    fig.tight_layout()
    fig.savefig(path, dpi=80)


# --- the run ------------------------------------------------------------------------------------

def control_loop(a, profile, fleet, scaler, broker, qname, answers, t0):
    """Runs the profile under the scaler; returns the samples and the polls."""
    samples, polls = [], []
    keda_next, hpa_next = t0, t0
    while True:
        now = time.time()
        fleet.reap()
        for kind in ("keda", "hpa"):
            due = keda_next if kind == "keda" else hpa_next
            current = len(fleet.running)
            if now < due or (kind == "hpa" and current == 0):
                continue
            if kind == "keda":
                after, info = scaler.keda_poll(now - t0, current)
                keda_next += scaler.keda.poll_s
            else:
                after, info = scaler.hpa_sync(now - t0, current)
                hpa_next += scaler.keda.hpa.sync_s
            fleet.scale_to(after)
            polls.append(dict(info, kind=kind, t=round(now - t0, 2), before=current, after=after))
        if now >= hpa_next and len(fleet.running) == 0:
            hpa_next = now + scaler.keda.hpa.sync_s
        samples.append({"t": now - t0, "ready": broker.ready(qname) or 0, "workers": len(fleet.running)})
        end = t0 + profile.duration
        if now >= end:
            with answers.lock:
                missing = len(answers.sent) - len(answers.first)
            shrunk = len(fleet.running) <= 1 or now >= end + a.tail_s
            if (missing == 0 and shrunk) or now >= end + max(a.drain_s, a.tail_s):
                return samples, polls
        time.sleep(0.25)


def main():
    a = args_parse()
    if not os.access(a.binary, os.X_OK):
        sys.exit("no %s: cargo build --release (or --binary)" % a.binary)
    spec = load_spec(a)
    scale = TimeScale(a.time_scale)
    profile = profile_of(a)
    prefix = "sim-%08x" % random.getrandbits(32)
    qname = prefix + ".predict.iris"
    tmp = tempfile.mkdtemp(prefix="fleet-sim-")
    repo = os.path.join(tmp, "models")
    shutil.copytree(os.path.join(ROOT, "models", "iris"), os.path.join(repo, "iris"))
    with open(os.path.join(repo, "iris", "config.toml"), "w") as f:
        f.write("max_batch_size = %d\nmax_queue_delay_ms = 2\ninstances = 1\n" % a.batch)
    fleet = Fleet(a, prefix, repo, tmp, os.path.join(tmp, "workers.json"))
    print("prefix %s, logs %s" % (prefix, tmp), file=sys.stderr)
    prom = None
    try:
        answers = Answers(a.url)
        answers.start()
        jobs, failed = queue.Queue(), []
        pubs = [threading.Thread(target=publisher, args=(a.url, qname, answers, jobs, failed), daemon=True)
                for _ in range(a.publishers)]
        for p in pubs:
            p.start()
        broker = Broker(a.url)
        load_start = os.getloadavg()
        if a.measure_s or a.measure_only:
            measured = measure(a, fleet, answers, jobs, a.measure_s or 10)
            print(json.dumps({"measured": measured}), file=sys.stderr)
            if a.measure_only:
                print(json.dumps(measured))
                return
            mu = a.worker_rate or measured["jobs_per_s"]
            if a.rates_x:
                a.base_rate, a.peak_rate = (round(x * mu, 1) for x in a.rates_x)
                profile = profile_of(a)
            for i, t in enumerate(spec["triggers"]):
                if a.busy_share and "infermq_job_slots" in t["metadata"].get("query", ""):
                    t["metadata"]["threshold"] = "%.3f" % (a.busy_share * measured["slot_occupancy"])
                    a.set.append("triggers.%d.metadata.threshold=%s" % (i, t["metadata"]["threshold"]))
                if a.backlog_wait_s and t["type"] == "rabbitmq" and ".predict." in t["metadata"]["queueName"]:
                    t["metadata"]["value"] = str(max(1, round(mu * a.backlog_wait_s)))
                    a.set.append("triggers.%d.metadata.value=%s" % (i, t["metadata"]["value"]))
        else:
            measured, mu = None, a.worker_rate
        if not mu:
            sys.exit("--measure-s 0 needs --worker-rate")
        queries = " ".join(t.get("metadata", {}).get("query", "") for t in spec["triggers"])
        if "rabbitmq_" in queries and not port_busy(15692):
            sys.exit("a query reads rabbitmq_* but RabbitMQ's Prometheus endpoint (127.0.0.1:15692) does not "
                     "answer: rabbitmq-plugins enable rabbitmq_prometheus")
        prom = Prometheus(a, tmp, fleet.sd_path, "rabbitmq_" in queries)
        scaler = Scaler(spec, scale, prefix, prom, broker)
        hpa_min = scaler.keda.hpa.min
        first = max(scaler.keda.min, 1 if profile.rate(0) > 0 else 0)
        lives = [fleet.start() for _ in range(first)]
        if not wait_ready(lives, time.time() + 60):
            sys.exit("the first workers were not ready within 60 s (log: %s)" % tmp)
        t0 = time.time()
        if first:  # the fleet has been serving the base load: KEDA saw it active until now
            scaler.keda.last_active = 0.0
        threading.Thread(target=scheduler, args=(profile, jobs, t0, 0), daemon=True).start()
        samples, polls = control_loop(a, profile, fleet, scaler, broker, qname, answers, t0)
        for _ in pubs:
            jobs.put(None)
        for p in pubs:
            p.join(30)
        fleet.stop_all()
        time.sleep(1)  # late duplicates
        answers.stop = True
        with answers.lock:
            lost = len(answers.sent) - len(answers.first)
        dead = broker.ready(prefix + ".dead")
        rows = windows(a, t0, answers, samples, profile, mu, hpa_min)
        summary = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0)), "host": os.uname().nodename,
                   "loadavg_start": [round(x, 2) for x in load_start],
                   "loadavg_end": [round(x, 2) for x in os.getloadavg()], "prefix": prefix,
                   "manifest": os.path.relpath(a.manifest, ROOT), "set": a.set, "time_scale": a.time_scale,
                   "profile": a.profile, "base_rate": a.base_rate, "peak_rate": a.peak_rate,
                   "stretch": a.stretch, "prefetch": a.prefetch, "batch": a.batch, "measured": measured,
                   "worker_rate": mu, "published": len(answers.sent), "publish_failed": len(failed),
                   "answered": len(answers.first), "lost": lost, "duplicates": answers.dups,
                   "error_answers": answers.errors, "unexpected": answers.unexpected, "dead_lettered": dead,
                   "workers_started": fleet.started, "max_workers": max(s["workers"] for s in samples),
                   "max_ready": max(s["ready"] for s in samples), "worker_exit_codes": fleet.exits}
        targets = judge(a, profile, rows, samples, summary, mu, hpa_min, scale)
        starts = cold_starts(fleet, polls, answers, t0)
        print(json.dumps({"summary": summary, "targets": targets, "cold_starts": starts}, indent=1))
        print("%6s %6s %8s %8s %7s %6s %6s %8s %8s" % ("t_s", "rate", "pub/s", "ans/s", "workers",
                                                       "needed", "ready", "p50_ms", "p99_ms"))
        for r in rows:
            print("%6.0f %6.0f %8.0f %8.0f %3s-%-3s %6s %6s %8s %8s" % (
                r["t"], r["rate"], r["published_per_s"], r["answered_per_s"], r["workers_min"],
                r["workers_max"], r["needed"], r["ready"], r["p50_ms"], r["p99_ms"]))
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"summary": summary, "targets": targets, "cold_starts": starts,
                           "windows": rows, "polls": polls}, f, indent=1)
        if a.png:
            plot(a, rows, summary, a.png)
        sys.exit(1 if lost else 0)
    finally:
        fleet.stop_all()
        if prom:
            prom.stop()
        subprocess.run([os.path.join(ROOT, "scripts", "delete-prefix.sh"), prefix],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)


if __name__ == "__main__":
    main()
