#!/usr/bin/env python3
"""Fleet simulator: KEDA's RabbitMQ scaler rule applied to real `infermq worker` processes.

Every `--poll-s` seconds it reads the ready jobs of `<prefix>.predict.iris` (a passive
queue_declare: what KEDA's `rabbitmq` scaler reads with `protocol: amqp`), computes
desired = ceil(ready / value) clamped to [min, max], scales up at once, and scales down only
to the largest desired count of the last `--cooldown-s` seconds (the HPA's scale-down
stabilization window; KEDA's own cooldownPeriod only governs scaling to zero). It starts workers
(release binary, own INFERMQ__HTTP__LISTEN port, shared random prefix, a temporary model
repository holding only iris) and stops them with SIGTERM, newest first, while a publisher
sends 1-row iris jobs (confirms, mandatory, reply_to, correlation_id) on a rate profile that
rises tenfold, holds and falls. Answers are counted by correlation id: lost (must be 0),
duplicates, latency (publish -> answer) per window.

Needs pika, and matplotlib for --png (`python3 -m pip install pika matplotlib`).
Example (docs/OPERATIONS.md, Autoscaling):
  python3 scripts/fleet-sim.py --base-rate 50 --value 100 --png docs/autoscaling.png
"""
import argparse, json, math, os, queue, random, shutil, signal, subprocess, sys, tempfile
import threading, time, urllib.request

import pika

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BODY = '{"id":"%s","inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}'


def args_parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--binary", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "infermq"))
    p.add_argument("--url", default=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))
    p.add_argument("--value", type=float, default=100, help="ready jobs per worker (KEDA value)")
    p.add_argument("--min", type=int, default=1)
    p.add_argument("--max", type=int, default=8)
    p.add_argument("--poll-s", type=float, default=5, help="KEDA pollingInterval")
    p.add_argument("--cooldown-s", type=float, default=30, help="scale-down stabilization window")
    p.add_argument("--base-rate", type=float, default=50, help="jobs/s before and after the peak")
    p.add_argument("--factor", type=float, default=10, help="peak = base x factor")
    p.add_argument("--phases", default="20,15,60,15,40",
                   help="seconds: base, rise, hold, fall, base again")
    p.add_argument("--prefetch", type=int, default=1, help="each worker's broker.prefetch")
    p.add_argument("--batch", type=int, default=1, help="iris max_batch_size in the temp repository")
    p.add_argument("--publishers", type=int, default=4, help="publisher threads (one connection each)")
    p.add_argument("--drain-s", type=float, default=60, help="wait for answers after the profile")
    p.add_argument("--window-s", type=float, default=5)
    p.add_argument("--json", help="write the summary and windows here")
    p.add_argument("--png", help="draw the plot here")
    p.add_argument("--measure", type=float, default=0,
                   help="instead: one worker, N s of saturating load; print its jobs/s")
    return p.parse_args()


def connect(url):
    params = pika.URLParameters(url)
    params.heartbeat = 0  # threads may sit in a queue.get() longer than a heartbeat
    return pika.BlockingConnection(params)


def rate_at(a, t):
    b0, rise, hold, fall, b1 = [float(x) for x in a.phases.split(",")]
    peak = a.base_rate * a.factor
    if t < b0:
        return a.base_rate
    t -= b0
    if t < rise:
        return a.base_rate + (peak - a.base_rate) * t / rise
    t -= rise
    if t < hold:
        return peak
    t -= hold
    if t < fall:
        return peak - (peak - a.base_rate) * t / fall
    t -= fall
    return a.base_rate if t < b1 else 0.0


def profile_len(a):
    return sum(float(x) for x in a.phases.split(","))


class Fleet:
    """Worker processes: start on a fresh port, stop with SIGTERM (newest first), reap."""

    def __init__(self, a, prefix, repo, logdir):
        self.a, self.prefix, self.repo, self.logdir = a, prefix, repo, logdir
        self.running, self.stopping, self.started, self.exits = [], [], 0, []
        self.port = 18600 + random.randrange(0, 300)

    def start(self):
        self.port += 1
        env = dict(os.environ, INFERMQ__BROKER__URL=self.a.url, INFERMQ__BROKER__PREFIX=self.prefix,
                   INFERMQ__BROKER__PREFETCH=str(self.a.prefetch),
                   INFERMQ__HTTP__LISTEN="127.0.0.1:%d" % self.port,
                   INFERMQ__REPOSITORY__PATH=self.repo, INFERMQ__TRAINING__ENABLED="false",
                   INFERMQ__RUNTIME__EXECUTION_PROVIDERS="cpu", INFERMQ__LOG__LEVEL="warn")
        env.setdefault("ORT_DYLIB_PATH", os.path.join(ROOT, ".ort/onnxruntime/capi/libonnxruntime.so.1.31.1"))
        log = open(os.path.join(self.logdir, "worker-%d.log" % self.started), "w")
        proc = subprocess.Popen([self.a.binary, "worker"], cwd=self.logdir, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        self.started += 1
        self.running.append((proc, self.port))
        return self.port

    def stop_one(self):
        proc, _ = self.running.pop()
        proc.send_signal(signal.SIGTERM)
        self.stopping.append(proc)

    def reap(self):
        for proc in [p for p in self.stopping if p.poll() is not None]:
            self.stopping.remove(proc)
            self.exits.append(proc.returncode)
        for proc, port in [r for r in self.running if r[0].poll() is not None]:
            self.running.remove((proc, port))
            self.exits.append(proc.returncode)
            print("worker on port %d died with %s" % (port, proc.returncode), file=sys.stderr)

    def stop_all(self, timeout=60):
        while self.running:
            self.stop_one()
        deadline = time.time() + timeout
        while self.stopping and time.time() < deadline:
            self.reap()
            time.sleep(0.2)
        for proc in self.stopping:
            proc.kill()


def ready(port, deadline):
    while time.time() < deadline:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % port, timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


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


def scheduler(a, jobs, t0, end, closed_loop=None):
    """Puts job ids on `jobs` as the rate profile makes them due (open loop)."""
    due = 0.0
    n = 0
    last = t0
    while True:
        now = time.time()
        if now >= end:
            break
        due += rate_at(a, now - t0) * (now - last)
        last = now
        while n < int(due):
            jobs.put("j%d" % n)
            n += 1
        time.sleep(0.01)


def windows(a, t0, answers, samples):
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
        inw = [s for s in samples if lo <= s["t"] + t0 < hi] or [None]
        last = inw[-1]
        out.append({"t": round(k * a.window_s, 1), "published_per_s": pub / a.window_s,
                    "answered_per_s": len(lat) / a.window_s, "p50_ms": pick(0.5), "p99_ms": pick(0.99),
                    "workers": last and last["workers"], "desired": last and last["desired"],
                    "ready": last and max(s["ready"] for s in inw)})
        k += 1
    return out


def plot(a, rows, summary, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = [r["t"] for r in rows]
    fig, ax = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    ax[0].plot(t, [r["published_per_s"] for r in rows], label="published jobs/s")
    ax[0].plot(t, [r["answered_per_s"] for r in rows], label="answered jobs/s")
    ax[0].legend(); ax[0].set_ylabel("jobs/s")
    ax[1].step(t, [r["workers"] or 0 for r in rows], where="post", label="worker processes")
    ax[1].step(t, [r["desired"] or 0 for r in rows], where="post", ls="--", label="ceil(ready/value)")
    ax[1].legend(); ax[1].set_ylabel("workers")
    ax[2].plot(t, [r["ready"] or 0 for r in rows]); ax[2].set_ylabel("ready jobs (max)")
    ax[3].plot(t, [r["p50_ms"] for r in rows], label="p50")
    ax[3].plot(t, [r["p99_ms"] for r in rows], label="p99")
    ax[3].set_yscale("log"); ax[3].legend(); ax[3].set_ylabel("latency ms"); ax[3].set_xlabel("s")
    fig.suptitle("infermq fleet under KEDA's rule: value=%g, poll %gs, window %gs, min %d max %d\n"
                 "%d jobs, lost %d, duplicates %d" % (a.value, a.poll_s, a.cooldown_s, a.min, a.max,
                                                      summary["published"], summary["lost"],
                                                      summary["duplicates"]))
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main():
    a = args_parse()
    if not os.access(a.binary, os.X_OK):
        sys.exit("no %s: cargo build --release (or --binary)" % a.binary)
    prefix = "sim-%08x" % random.getrandbits(32)
    qname = prefix + ".predict.iris"
    tmp = tempfile.mkdtemp(prefix="fleet-sim-")
    repo = os.path.join(tmp, "models")
    shutil.copytree(os.path.join(ROOT, "models", "iris"), os.path.join(repo, "iris"))
    with open(os.path.join(repo, "iris", "config.toml"), "w") as f:
        f.write("max_batch_size = %d\nmax_queue_delay_ms = 2\ninstances = 1\n" % a.batch)
    fleet = Fleet(a, prefix, repo, tmp)
    print("prefix %s, logs %s" % (prefix, tmp), file=sys.stderr)
    try:
        for _ in range(max(a.min, 1)):
            port = fleet.start()
        if not ready(port, time.time() + 60):
            sys.exit("the first worker was not ready within 60 s (log: %s)" % tmp)
        answers = Answers(a.url)
        answers.start()
        jobs, failed = queue.Queue(), []
        pubs = [threading.Thread(target=publisher, args=(a.url, qname, answers, jobs, failed), daemon=True)
                for _ in range(a.publishers)]
        for p in pubs:
            p.start()
        depth = connect(a.url).channel()
        t0 = time.time()
        if a.measure:
            # Closed loop, enough outstanding jobs to keep one worker busy.
            end = t0 + a.measure
            n = 0
            while time.time() < end:
                while n - len(answers.first) < 200:
                    jobs.put("j%d" % n); n += 1
                time.sleep(0.005)
            done = len(answers.first)
            print(json.dumps({"measure_s": a.measure, "answered": done, "jobs_per_s": done / a.measure,
                              "prefetch": a.prefetch, "batch": a.batch}))
            for _ in pubs: jobs.put(None)
            return
        end = t0 + profile_len(a)
        sched = threading.Thread(target=scheduler, args=(a, jobs, t0, end), daemon=True)
        sched.start()
        samples, history, polls = [], [], []
        next_poll = t0
        while True:
            now = time.time()
            fleet.reap()
            ready_n = depth.queue_declare(qname, passive=True).method.message_count
            if now >= next_poll:
                want = min(a.max, max(a.min, math.ceil(ready_n / a.value)))
                history.append((now, want))
                history = [(t, w) for t, w in history if t >= now - a.cooldown_s]
                # Up at once; down only to the largest want of the stabilization window.
                target = want if want > len(fleet.running) else \
                    min(len(fleet.running), max(w for _, w in history))
                before = len(fleet.running)
                while len(fleet.running) < target:
                    fleet.start()
                while len(fleet.running) > target:
                    fleet.stop_one()
                polls.append({"t": round(now - t0, 2), "ready": ready_n, "want": want,
                              "window_max": max(w for _, w in history), "before": before,
                              "after": len(fleet.running)})
                next_poll += a.poll_s
            samples.append({"t": now - t0, "ready": ready_n, "workers": len(fleet.running),
                            "desired": history[-1][1] if history else a.min})
            if now >= end:
                with answers.lock:
                    missing = len(answers.sent) - len(answers.first)
                if missing == 0 or now >= end + a.drain_s:
                    break
            time.sleep(0.5)
        for _ in pubs:
            jobs.put(None)
        for p in pubs:
            p.join(30)
        time.sleep(1)  # late duplicates
        answers.stop = True
        with answers.lock:
            lost = len(answers.sent) - len(answers.first)
        dead = depth.queue_declare(prefix + ".dead", passive=True).method.message_count
        rows = windows(a, t0, answers, samples)
        summary = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t0)), "host": os.uname().nodename,
                   "loadavg_start_end": [round(x, 2) for x in os.getloadavg()], "prefix": prefix,
                   "value": a.value, "min": a.min, "max": a.max, "poll_s": a.poll_s, "cooldown_s": a.cooldown_s,
                   "prefetch": a.prefetch, "batch": a.batch, "base_rate": a.base_rate, "factor": a.factor,
                   "phases": a.phases, "published": len(answers.sent), "publish_failed": len(failed),
                   "answered": len(answers.first), "lost": lost, "duplicates": answers.dups,
                   "error_answers": answers.errors, "unexpected": answers.unexpected,
                   "dead_lettered": dead, "workers_started": fleet.started,
                   "max_workers": max(s["workers"] for s in samples),
                   "max_ready": max(s["ready"] for s in samples), "worker_exit_codes": fleet.exits}
        print(json.dumps(summary, indent=1))
        print("%6s %8s %8s %7s %7s %6s %8s %8s" % ("t_s", "pub/s", "ans/s", "workers", "desired",
                                                  "ready", "p50_ms", "p99_ms"))
        for r in rows:
            print("%6.0f %8.0f %8.0f %7s %7s %6s %8s %8s" % (r["t"], r["published_per_s"], r["answered_per_s"],
                  r["workers"], r["desired"], r["ready"], r["p50_ms"], r["p99_ms"]))
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"summary": summary, "windows": rows, "polls": polls}, f, indent=1)
        if a.png:
            plot(a, rows, summary, a.png)
        sys.exit(1 if lost else 0)
    finally:
        fleet.stop_all()
        subprocess.run([os.path.join(ROOT, "scripts", "delete-prefix.sh"), prefix],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)


if __name__ == "__main__":
    main()
