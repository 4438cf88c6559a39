//! `infermq batch requests.jsonl --output results.jsonl`: a batch file in OpenAI's format (one
//! `{"custom_id", "method": "POST", "url": "/v1/chat/completions" | "/v1/completions",
//! "body"}` per line) sent as generation jobs straight to the queues, each answer written as
//! an output line `{"id", "custom_id", "response": {"status_code", "request_id", "body"},
//! "error"}` as it arrives, with `body` what the gateway's `/v1` routes would answer
//! ([`crate::gateway::openai`]; chat messages rendered with the model's template from
//! `repository.path`).
//!
//! One broker connection and one channel carry every job (publisher confirms, `mandatory`,
//! answers on the channel's exclusive reply queue); at most `window` jobs are in flight, so a
//! file of any length takes bounded memory beside the set of `custom_id`s seen. A line that is
//! not a request, or whose `custom_id` an earlier line has, is answered by an output line of
//! its own with `error` set; a request the API would refuse is answered with its 4xx
//! `response`; neither stops the file.
//!
//! Resuming: the output file is appended to, never rewritten. At start the lines already in it
//! are read ([`lines::Resume`]): a request answered there is not asked again, a refused line
//! not refused again, and a last line cut by a crash is dropped and asked again. So a rerun
//! after a crash, a kill or Ctrl-C (which stops sending, waits [`DRAIN`] for the answers in
//! flight, and writes them) completes the file with every `custom_id` answered once. Jobs in
//! flight when the process died still run; their answers, sent to a reply queue that is gone,
//! are dead-lettered by the workers, and the rerun asks for them again.

mod lines;

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use crate::broker::headers::{DEADLINE_MS, ERROR_CODE};
use crate::broker::PublishOutcome;
use crate::client::{header_str, model_queue, Client, ClientError};
use crate::config::Settings;
use crate::gateway::chat::{self, ChatTemplate};
use crate::gateway::job::{job_body, Answer, Failure};
use crate::gateway::openai::{ApiError, Kind, Prompt, Reply, Request};
use crate::protocol::EncodedBody;
use lines::{Line, Resume};

/// How long a stop (Ctrl-C, SIGTERM) waits for the answers of the jobs in flight.
pub const DRAIN: Duration = Duration::from_secs(5);

/// What to send and how.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    /// Jobs in flight at most.
    pub window: usize,
    /// Each job's deadline (`x-deadline-ms`), from when it is sent; none: jobs wait as long as
    /// the queue takes.
    pub job_timeout: Option<Duration>,
    /// Give up when no answer came for this long while jobs are in flight.
    pub idle_timeout: Duration,
}

/// Why a batch stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Broker(#[from] ClientError),
}

/// What a run did, line by line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Lines in the file.
    pub total: u64,
    /// Lines read (blank lines included).
    pub lines: u64,
    /// Blank lines (no request, no answer).
    pub blank: u64,
    /// Requests answered by a response line (any status).
    pub answered: u64,
    /// Lines answered with `error` (not a request, or a `custom_id` used before).
    pub refused: u64,
    /// Lines the output file answered already.
    pub skipped: u64,
    /// Requests sent whose answer never came (a rerun asks again).
    pub unanswered: u64,
}

impl Summary {
    /// Lines with no answer in the output file yet: unread, or sent and not answered.
    pub fn unfinished(&self) -> u64 {
        let done = self.answered + self.refused + self.skipped + self.blank;
        self.total.saturating_sub(done)
    }
}

/// A job in flight: its input line.
struct Pending {
    line: u64,
    custom_id: String,
    reply: Reply,
}

/// Runs the batch of `options`; `stop` ends it early (the answers in flight are awaited
/// [`DRAIN`] long).
pub async fn run(
    settings: &Settings,
    options: &BatchOptions,
    stop: CancellationToken,
) -> Result<Summary, BatchError> {
    let file_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BatchError::File { path, source }
    };
    let total = count_lines(&options.input).map_err(file_error(&options.input))?;
    let resume = match std::fs::read(&options.output) {
        Ok(bytes) => Resume::read(&bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Resume::default(),
        Err(e) => return Err(file_error(&options.output)(e)),
    };
    if !resume.is_empty() {
        eprintln!(
            "batch: resuming: {} lines of {} are answered already",
            resume.len(),
            options.output.display()
        );
    }
    let mut output = open_output(&options.output, resume.whole_bytes as u64)
        .map_err(file_error(&options.output))?;
    let input = tokio::fs::File::open(&options.input)
        .await
        .map_err(file_error(&options.input))?;
    let mut input = tokio::io::BufReader::new(input);
    let mut client = Client::connect_any(&settings.broker.url, &settings.broker.tls).await?;
    let mut batch = Batch {
        settings,
        options,
        resume,
        first_use: lines::FirstUse::default(),
        templates: HashMap::new(),
        run: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
        in_flight: HashMap::new(),
        confirms: FuturesUnordered::new(),
        summary: Summary {
            total,
            ..Summary::default()
        },
        progress: Progress::new(),
    };
    let mut text = Vec::new();
    let mut reading = true;
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        while reading && batch.in_flight.len() < options.window.max(1) {
            if stop.is_cancelled() {
                reading = false;
                break;
            }
            text.clear();
            let read = input
                .read_until(b'\n', &mut text)
                .await
                .map_err(file_error(&options.input))?;
            if read == 0 {
                reading = false;
                break;
            }
            batch.summary.lines += 1;
            let n = batch.summary.lines;
            let line = match std::str::from_utf8(&text) {
                Ok(line) => lines::read_line(line),
                Err(_) => Line::Bad {
                    custom_id: None,
                    message: "not valid UTF-8".into(),
                },
            };
            batch
                .take(&client, n, line, &mut output)
                .await
                .map_err(|e| e.into_batch(&options.output))?;
            batch
                .progress
                .show(&batch.summary, batch.in_flight.len(), false);
        }
        if batch.in_flight.is_empty() && !reading {
            break;
        }
        if stop.is_cancelled() && reading {
            reading = false;
        }
        if !reading && drain_until.is_none() && stop.is_cancelled() {
            drain_until = Some(tokio::time::Instant::now() + DRAIN);
        }
        let wait = match drain_until {
            Some(until) => until.saturating_duration_since(tokio::time::Instant::now()),
            None => options.idle_timeout,
        };
        tokio::select! {
            Some((id, outcome)) = batch.confirms.next(), if !batch.confirms.is_empty() => {
                batch.confirmed(&id, outcome, &mut output).map_err(file_error(&options.output))?;
            }
            reply = client.next_reply(wait) => match reply {
                Ok(delivery) => batch.answered(delivery, &mut output).map_err(file_error(&options.output))?,
                Err(ClientError::Timeout(_)) => {
                    batch.summary.unanswered += batch.in_flight.len() as u64;
                    batch.in_flight.clear();
                    break;
                }
                Err(e) => return Err(e.into()),
            },
            () = stop.cancelled(), if reading => reading = false,
        }
        batch
            .progress
            .show(&batch.summary, batch.in_flight.len(), false);
    }
    batch.progress.show(&batch.summary, 0, true);
    let summary = batch.summary;
    client.close().await;
    Ok(summary)
}

/// The state of one run.
struct Batch<'a> {
    settings: &'a Settings,
    options: &'a BatchOptions,
    resume: Resume,
    first_use: lines::FirstUse,
    templates: HashMap<String, Result<Arc<ChatTemplate>, String>>,
    /// This run's part of every job id.
    run: String,
    in_flight: HashMap<String, Pending>,
    confirms: FuturesUnordered<futures_util::future::BoxFuture<'static, (String, PublishOutcome)>>,
    summary: Summary,
    progress: Progress,
}

/// A failure while taking a line: writing the output, or the broker.
enum TakeError {
    Output(std::io::Error),
    Broker(ClientError),
}

impl TakeError {
    fn into_batch(self, output: &Path) -> BatchError {
        match self {
            TakeError::Output(source) => BatchError::File {
                path: output.to_path_buf(),
                source,
            },
            TakeError::Broker(e) => BatchError::Broker(e),
        }
    }
}

impl Batch<'_> {
    /// Answers or sends input line `n`.
    async fn take(
        &mut self,
        client: &Client,
        n: u64,
        line: Line,
        output: &mut std::fs::File,
    ) -> Result<(), TakeError> {
        let (custom_id, kind, body) = match line {
            Line::Blank => {
                self.summary.blank += 1;
                return Ok(());
            }
            Line::Bad { custom_id, message } => {
                let line =
                    lines::refusal_line(n, custom_id.as_deref(), lines::INVALID_LINE, &message);
                return self.refuse(n, &line, output).map_err(TakeError::Output);
            }
            Line::Request {
                custom_id,
                kind,
                body,
            } => (custom_id, kind, body),
        };
        if let Some(first) = self.first_use.see(&custom_id, n) {
            let message = format!("custom_id {custom_id:?} is line {first}'s already");
            let line =
                lines::refusal_line(n, Some(&custom_id), lines::DUPLICATE_CUSTOM_ID, &message);
            return self.refuse(n, &line, output).map_err(TakeError::Output);
        }
        if self.resume.answered(&custom_id) {
            self.summary.skipped += 1;
            return Ok(());
        }
        let id = format!("batch-{}-{n}", self.run);
        let (queue, job) = match self.prepare(kind, body, &id) {
            Ok(prepared) => prepared,
            Err(error) => {
                let line =
                    lines::response_line(n, &custom_id, error.status.as_u16(), None, error.body());
                self.summary.answered += 1;
                return write_line(output, &line).map_err(TakeError::Output);
            }
        };
        let (request, body) = job;
        let mut headers = FieldTable::default();
        if let Some(timeout) = self.options.job_timeout {
            let at = SystemTime::now() + timeout;
            let ms = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
            let ms = i64::try_from(ms).unwrap_or(i64::MAX);
            headers.insert(DEADLINE_MS.into(), AMQPValue::LongLongInt(ms));
        }
        let encoded = EncodedBody {
            body,
            header_len: None,
            content_type: "application/json",
        };
        let properties = client.job_properties(&id, &encoded, headers);
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = client
            .channel()
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                options,
                &encoded.body,
                properties,
            )
            .await
            .map_err(|e| TakeError::Broker(e.into()))?;
        let reply = Reply::new(kind, &id, 0, &request.model);
        self.in_flight.insert(
            id.clone(),
            Pending {
                line: n,
                custom_id,
                reply,
            },
        );
        self.confirms.push(Box::pin(
            async move { (id, PublishOutcome::of(confirm).await) },
        ));
        Ok(())
    }

    /// Writes a refused line's output line, unless the output has it already.
    fn refuse(&mut self, n: u64, line: &str, output: &mut std::fs::File) -> std::io::Result<()> {
        if self.resume.refused(n) {
            self.summary.skipped += 1;
            return Ok(());
        }
        self.summary.refused += 1;
        write_line(output, line)
    }

    /// The request's queue and job (`id` its id), or the API's refusal.
    fn prepare(
        &mut self,
        kind: Kind,
        body: serde_json::Map<String, serde_json::Value>,
        id: &str,
    ) -> Result<(String, (Request, Vec<u8>)), ApiError> {
        let request = Request::from_object(kind, body)?;
        let queue = model_queue(&self.settings.broker.prefix, &request.model)
            .map_err(|e| ApiError::invalid("model", e.to_string()))?;
        let text = match &request.prompt {
            Prompt::Text(text) => text.clone(),
            Prompt::Messages(messages) => {
                let repository = &self.settings.repository.path;
                let template = self
                    .templates
                    .entry(request.model.clone())
                    .or_insert_with(|| chat::find(repository, &request.model).map(Arc::new));
                let rendered = match template {
                    Ok(template) => template.render(messages),
                    Err(why) => Err(why.clone()),
                };
                rendered.map_err(|why| ApiError::invalid("messages", why))?
            }
        };
        // Answered whole: a batch file has no use for a stream.
        let job = job_body(request.job(text), id, false, 0);
        Ok((queue, (request, job)))
    }

    /// A publish confirmed, returned (no worker serves the model) or lost.
    fn confirmed(
        &mut self,
        id: &str,
        outcome: PublishOutcome,
        output: &mut std::fs::File,
    ) -> std::io::Result<()> {
        match outcome {
            PublishOutcome::Confirmed => Ok(()),
            PublishOutcome::Returned(_) => {
                let Some(pending) = self.in_flight.remove(id) else {
                    return Ok(());
                };
                let failure = Failure::new(
                    axum::http::StatusCode::NOT_FOUND,
                    "unknown_model",
                    format!(
                        "unknown model {:?}: no worker serves it (no queue)",
                        pending.reply.model
                    ),
                );
                self.write_failure(&pending, None, &failure, output)
            }
            PublishOutcome::Nacked(_) | PublishOutcome::ChannelLost(_) => {
                if self.in_flight.remove(id).is_some() {
                    self.summary.unanswered += 1;
                }
                Ok(())
            }
        }
    }

    /// An answer on the reply queue: its request's output line.
    fn answered(&mut self, delivery: Delivery, output: &mut std::fs::File) -> std::io::Result<()> {
        let Some(id) = delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.to_string())
        else {
            return Ok(());
        };
        let Some(mut pending) = self.in_flight.remove(&id) else {
            return Ok(());
        };
        pending.reply.created = unix_now();
        let code = header_str(&delivery, ERROR_CODE);
        match Answer::read(&delivery.data, code.as_deref()) {
            Ok(answer) => {
                let finish = answer.finish_reason.as_deref().unwrap_or("length");
                let body = pending.reply.whole(&answer.text, finish, answer.usage);
                let line =
                    lines::response_line(pending.line, &pending.custom_id, 200, Some(&id), body);
                self.summary.answered += 1;
                write_line(output, &line)
            }
            Err(failure) => self.write_failure(&pending, Some(&id), &failure, output),
        }
    }

    fn write_failure(
        &mut self,
        pending: &Pending,
        request_id: Option<&str>,
        failure: &Failure,
        output: &mut std::fs::File,
    ) -> std::io::Result<()> {
        let error = ApiError::from_failure(failure, pending.reply.kind);
        let line = lines::response_line(
            pending.line,
            &pending.custom_id,
            error.status.as_u16(),
            request_id,
            error.body(),
        );
        self.summary.answered += 1;
        write_line(output, &line)
    }
}

/// Appends one line (and its newline) in one write, so a crash cuts at most the last line.
fn write_line(output: &mut std::fs::File, line: &str) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    output.write_all(&bytes)
}

/// The output file for appending, cut to `whole_bytes` (a last line without its newline goes).
fn open_output(path: &Path, whole_bytes: u64) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    if file.metadata()?.len() > whole_bytes {
        file.set_len(whole_bytes)?;
    }
    Ok(file)
}

/// Lines in `path` (a last line without a newline counts).
fn count_lines(path: &Path) -> std::io::Result<u64> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buffer = vec![0u8; 1 << 16];
    let mut lines = 0u64;
    let mut last = b'\n';
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        lines += buffer[..read].iter().filter(|&&b| b == b'\n').count() as u64;
        last = buffer[read - 1];
    }
    Ok(lines + u64::from(last != b'\n'))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The progress line on stderr: redrawn in place on a terminal (at most 10 times a second),
/// else a line every 5 seconds.
struct Progress {
    terminal: bool,
    last: Option<Instant>,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    fn show(&mut self, summary: &Summary, in_flight: usize, last: bool) {
        let every = if self.terminal {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        if !last && self.last.is_some_and(|at| at.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        let line = format!(
            "batch: {}/{} lines read; {} answered, {} refused, {} answered before; {} in flight",
            summary.lines,
            summary.total,
            summary.answered,
            summary.refused,
            summary.skipped,
            in_flight
        );
        let mut stderr = std::io::stderr().lock();
        let _ = if self.terminal {
            write!(stderr, "\r\x1b[2K{line}{}", if last { "\n" } else { "" })
        } else {
            writeln!(stderr, "{line}")
        };
    }
}
