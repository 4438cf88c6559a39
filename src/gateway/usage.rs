//! Usage per request: every request that reaches a guarded route gets a [`Meter`], filled as it
//! is answered (its model, status, rows, tokens) and recorded once, when its last holder lets
//! go of it — the key check as it answers, or a stream's generation when its last event is
//! sent (or its client left and the job's last answer came). Recording counts the request in
//! the per-tenant series of [`GatewayMetrics`] and, with `gateway.usage_log`, appends one JSON
//! line to the usage log:
//!
//! ```json
//! {"time":"2026-02-01T12:00:00.123Z","key":"team-a","model":"iris","endpoint":"infer","status":200,"rows":1,"prompt_tokens":0,"completion_tokens":0,"duration_ms":2.418}
//! ```
//!
//! The log is written by a thread of its own ([`UsageLog`]): lines are handed over without
//! waiting (past 65,536 lines waiting they are dropped and counted), written through a buffer
//! flushed to the file, and synced, at least once a second, so a crash loses at most the last
//! second. At `gateway.usage_log_max_bytes` the file is renamed `<file>.1` (older ones shift up
//! to `<file>.<usage_log_files>`, the oldest is removed) and a new one begun. The file is only
//! appended to: a line is never rewritten.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::metrics::{Endpoint, GatewayMetrics};
use super::quota::TenantQuota;

/// Lines waiting for the writer at most.
const QUEUE_LINES: usize = 65_536;
/// How often what was written is flushed and synced.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// One line of the usage log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    /// When the request arrived, UTC, RFC 3339 with milliseconds.
    pub time: String,
    /// The API key's name; `anonymous` without keys; `-` when the key was not known.
    pub key: String,
    /// The model asked for, when its name is valid; else empty.
    pub model: String,
    pub endpoint: &'static str,
    pub status: u16,
    pub rows: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub duration_ms: f64,
}

/// Where meters record: the per-tenant series and the usage log (when there is one).
pub struct Usage {
    metrics: Arc<GatewayMetrics>,
    log: Option<UsageLog>,
}

impl Usage {
    pub fn new(metrics: Arc<GatewayMetrics>, log: Option<UsageLog>) -> Usage {
        Usage { metrics, log }
    }

    /// A meter for a request of `tenant` to `endpoint`, arrived at `started`; `quota` is
    /// charged the tokens of its generation.
    pub fn meter(
        self: &Arc<Self>,
        tenant: Arc<str>,
        endpoint: Endpoint,
        quota: Option<Arc<Mutex<TenantQuota>>>,
        started: Instant,
    ) -> Meter {
        Meter(Arc::new(Metered {
            usage: self.clone(),
            started,
            time: SystemTime::now()
                .checked_sub(started.elapsed())
                .unwrap_or(UNIX_EPOCH),
            tenant,
            endpoint,
            quota,
            fields: Mutex::default(),
        }))
    }

    /// Writes what the log holds and stops its writer (at shutdown).
    pub async fn close(&self) {
        if let Some(log) = &self.log {
            log.close().await;
        }
    }

    fn record(&self, metered: &Metered, fields: &Fields) {
        let seconds = metered.started.elapsed().as_secs_f64();
        let tenant = &*metered.tenant;
        self.metrics
            .tenant_request(tenant, metered.endpoint, fields.status, seconds);
        if fields.rows > 0 {
            self.metrics.tenant_rows(tenant, &fields.model, fields.rows);
        }
        if fields.prompt_tokens + fields.completion_tokens > 0 {
            self.metrics.tenant_tokens(
                tenant,
                &fields.model,
                fields.prompt_tokens,
                fields.completion_tokens,
            );
        }
        let Some(log) = &self.log else {
            return;
        };
        let line = Line {
            time: utc_time(metered.time),
            key: tenant.to_string(),
            model: fields.model.clone(),
            endpoint: metered.endpoint.as_str(),
            status: fields.status,
            rows: fields.rows,
            prompt_tokens: fields.prompt_tokens,
            completion_tokens: fields.completion_tokens,
            duration_ms: (seconds * 1e6).round() / 1e3,
        };
        if !log.append(&line) {
            self.metrics.usage_line_dropped();
        }
    }
}

/// What a request used, recorded when the last clone is dropped. Cheap to clone.
#[derive(Clone)]
pub struct Meter(Arc<Metered>);

struct Metered {
    usage: Arc<Usage>,
    started: Instant,
    time: SystemTime,
    tenant: Arc<str>,
    endpoint: Endpoint,
    quota: Option<Arc<Mutex<TenantQuota>>>,
    fields: Mutex<Fields>,
}

#[derive(Default)]
struct Fields {
    model: String,
    status: u16,
    rows: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
}

impl Meter {
    fn fields(&self) -> Option<std::sync::MutexGuard<'_, Fields>> {
        self.0.fields.lock().ok()
    }

    /// The model the request asked for (a valid name).
    pub fn model(&self, model: &str) {
        if let Some(mut fields) = self.fields() {
            model.clone_into(&mut fields.model);
        }
    }

    /// The status the request was answered with.
    pub fn status(&self, status: u16) {
        if let Some(mut fields) = self.fields() {
            fields.status = status;
        }
    }

    /// Rows of an inference request answered 200.
    pub fn rows(&self, rows: u64) {
        if let Some(mut fields) = self.fields() {
            fields.rows += rows;
        }
    }

    /// A generation's tokens, from its answer's `usage`: recorded, and charged to the key's
    /// `tokens_per_minute`.
    pub fn tokens(&self, prompt: u64, completion: u64) {
        if let Some(mut fields) = self.fields() {
            fields.prompt_tokens += prompt;
            fields.completion_tokens += completion;
        }
        if let Some(quota) = &self.0.quota {
            if let Ok(mut quota) = quota.lock() {
                quota.charge_tokens(prompt + completion, Instant::now());
            }
        }
    }
}

impl Drop for Metered {
    fn drop(&mut self) {
        let fields = match self.fields.get_mut() {
            Ok(fields) => std::mem::take(fields),
            Err(poisoned) => std::mem::take(poisoned.into_inner()),
        };
        self.usage.record(self, &fields);
    }
}

/// What the usage log's writer is asked.
enum Command {
    Line(Vec<u8>),
    /// Write and sync everything, then stop, and say so.
    Close(tokio::sync::oneshot::Sender<()>),
}

/// The usage log: a handle on its writer thread.
pub struct UsageLog {
    commands: SyncSender<Command>,
}

impl UsageLog {
    /// Opens `path` for appending (creating it) and starts the writer. The error names the file.
    pub fn open(path: &Path, max_bytes: u64, files: usize) -> Result<UsageLog, String> {
        let file = open_append(path)?;
        let size = file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let (commands, receiver) = sync_channel(QUEUE_LINES);
        let writer = Writer {
            path: path.to_path_buf(),
            max_bytes,
            files,
            out: std::io::BufWriter::with_capacity(64 << 10, file),
            size,
            dirty: false,
        };
        std::thread::Builder::new()
            .name("usage-log".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| format!("usage log writer: {e}"))?;
        Ok(UsageLog { commands })
    }

    /// Hands a line to the writer; false when it was dropped (the writer is behind or gone).
    fn append(&self, line: &Line) -> bool {
        let Ok(mut bytes) = serde_json::to_vec(line) else {
            return false;
        };
        bytes.push(b'\n');
        match self.commands.try_send(Command::Line(bytes)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    async fn close(&self) {
        let (done, closed) = tokio::sync::oneshot::channel();
        // A full queue is waited for here (the writer drains it), off the async threads.
        let commands = self.commands.clone();
        let sent =
            tokio::task::spawn_blocking(move || commands.send(Command::Close(done)).is_ok()).await;
        if matches!(sent, Ok(true)) {
            let _ = closed.await;
        }
    }
}

fn open_append(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The writer thread's state.
struct Writer {
    path: PathBuf,
    max_bytes: u64,
    files: usize,
    out: std::io::BufWriter<File>,
    size: u64,
    dirty: bool,
}

impl Writer {
    fn run(mut self, commands: Receiver<Command>) {
        let mut next_flush = Instant::now() + FLUSH_EVERY;
        loop {
            let wait = next_flush.saturating_duration_since(Instant::now());
            match commands.recv_timeout(wait) {
                Ok(Command::Line(line)) => self.write(&line),
                Ok(Command::Close(done)) => {
                    self.flush();
                    let _ = done.send(());
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush();
                    return;
                }
            }
            if Instant::now() >= next_flush {
                self.flush();
                next_flush = Instant::now() + FLUSH_EVERY;
            }
        }
    }

    fn write(&mut self, line: &[u8]) {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate();
        }
        match self.out.write_all(line) {
            Ok(()) => {
                self.size += line.len() as u64;
                self.dirty = true;
            }
            Err(error) => {
                tracing::error!(path = %self.path.display(), %error, "Cannot write the usage log")
            }
        }
    }

    fn flush(&mut self) {
        if !self.dirty {
            return;
        }
        let flushed = self
            .out
            .flush()
            .and_then(|()| self.out.get_ref().sync_data());
        if let Err(error) = flushed {
            tracing::error!(path = %self.path.display(), %error, "Cannot flush the usage log");
        }
        self.dirty = false;
    }

    /// `<file>` becomes `<file>.1`, `<file>.1` `<file>.2`, …; the oldest kept is
    /// `<file>.<files>`; then a new `<file>`.
    fn rotate(&mut self) {
        self.flush();
        let numbered = |n: usize| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        let shifted = (1..self.files)
            .rev()
            .map(|n| (numbered(n), numbered(n + 1)))
            .chain((self.files > 0).then(|| (self.path.clone(), numbered(1))));
        for (from, to) in shifted {
            if from.exists() {
                if let Err(error) = std::fs::rename(&from, &to) {
                    tracing::error!(from = %from.display(), to = %to.display(), %error, "Cannot rotate the usage log");
                }
            }
        }
        let reopened = if self.files == 0 {
            OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&self.path)
                .map_err(|e| e.to_string())
        } else {
            open_append(&self.path)
        };
        match reopened {
            Ok(file) => {
                self.out = std::io::BufWriter::with_capacity(64 << 10, file);
                self.size = 0;
            }
            Err(error) => {
                tracing::error!(path = %self.path.display(), %error, "Cannot reopen the usage log")
            }
        }
    }
}

/// `2026-02-01T12:00:00.123Z`: UTC, RFC 3339, milliseconds.
pub fn utc_time(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// The Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_rfc_3339_with_milliseconds() {
        let at = |secs: u64, ms: u64| UNIX_EPOCH + Duration::from_millis(secs * 1000 + ms);
        assert_eq!(utc_time(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc_time(at(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(utc_time(at(1_769_947_200, 123)), "2026-02-01T12:00:00.123Z");
        assert_eq!(utc_time(at(4_102_444_799, 999)), "2099-12-31T23:59:59.999Z");
    }

    fn usage(dir: &Path, max_bytes: u64, files: usize) -> (Arc<Usage>, Arc<GatewayMetrics>) {
        let metrics = Arc::new(GatewayMetrics::new());
        let log = UsageLog::open(&dir.join("usage.jsonl"), max_bytes, files).unwrap();
        (Arc::new(Usage::new(metrics.clone(), Some(log))), metrics)
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_meter_records_one_line_when_its_last_clone_goes() {
        let dir = tempfile::tempdir().unwrap();
        let (usage, metrics) = usage(dir.path(), 1 << 20, 2);
        let meter = usage.meter(
            Arc::from("team-a"),
            Endpoint::Completions,
            None,
            Instant::now(),
        );
        meter.model("llm");
        meter.status(200);
        let held = meter.clone();
        drop(meter);
        held.tokens(4, 8);
        drop(held);
        usage.close().await;
        let written = lines(&dir.path().join("usage.jsonl"));
        assert_eq!(written.len(), 1, "{written:?}");
        let line = &written[0];
        assert_eq!(line["key"], "team-a");
        assert_eq!(line["model"], "llm");
        assert_eq!(line["endpoint"], "completions");
        assert_eq!(line["status"], 200);
        assert_eq!(line["prompt_tokens"], 4);
        assert_eq!(line["completion_tokens"], 8);
        assert_eq!(line["rows"], 0);
        assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);
        assert!(line["time"].as_str().unwrap().ends_with('Z'));
        let text = metrics.render();
        assert!(text.contains(
            r#"infermq_gateway_tenant_tokens_total{kind="prompt",model="llm",tenant="team-a"} 4"#
        ));
    }

    #[tokio::test]
    async fn tokens_are_charged_to_the_keys_quota() {
        let dir = tempfile::tempdir().unwrap();
        let (usage, _) = usage(dir.path(), 1 << 20, 2);
        let now = Instant::now();
        let limits = super::super::keys::Limits {
            requests_per_second: None,
            tokens_per_minute: Some(60),
        };
        let quota = Arc::new(Mutex::new(TenantQuota::new(limits, now)));
        let meter = usage.meter(Arc::from("a"), Endpoint::Generate, Some(quota.clone()), now);
        meter.tokens(30, 40);
        let refused = quota.lock().unwrap().admit(true, Instant::now());
        assert!(refused.is_err(), "{refused:?}");
    }

    #[tokio::test]
    async fn the_log_is_rotated_by_size_and_keeps_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let (usage, _) = usage(dir.path(), 1000, 2);
        for i in 0..40 {
            let meter = usage.meter(Arc::from("a"), Endpoint::Infer, None, Instant::now());
            meter.model("iris");
            meter.status(200);
            meter.rows(i);
        }
        usage.close().await;
        let path = dir.path().join("usage.jsonl");
        let mut all = Vec::new();
        for name in ["usage.jsonl.2", "usage.jsonl.1", "usage.jsonl"] {
            let file = dir.path().join(name);
            assert!(std::fs::metadata(&file).unwrap().len() <= 1000, "{name}");
            all.extend(lines(&file));
        }
        assert!(!dir.path().join("usage.jsonl.3").exists());
        // The newest lines are kept, in order, each whole.
        let rows: Vec<u64> = all.iter().map(|l| l["rows"].as_u64().unwrap()).collect();
        assert_eq!(rows, (40 - rows.len() as u64..40).collect::<Vec<_>>());
        assert!(!lines(&path).is_empty());
    }
}
