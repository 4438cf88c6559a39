//! Text generation with continuous batching: one engine per decoder version, on a thread of its
//! own, runs every active job of the version in one decode step at a time.
//!
//! Each turn of the engine's loop:
//! 1. Jobs received wait in arrival order; a job that was cancelled, passed its deadline, or
//!    whose answer is no longer awaited leaves at once.
//! 2. While rows are free (`max_active_rows`), waiting jobs are taken in to prefill.
//! 3. Prompts are prefilled, each alone, in chunks, at most `max_prefill_tokens` tokens in all
//!    this turn: a long prompt is spread over turns, so the rows already decoding wait for one
//!    budget at most between two tokens. A prompt done gives its job's first token, and its
//!    caches join the batch.
//! 4. Rows that ended leave, rows that joined come in: the caches are gathered anew
//!    ([`caches::Caches::gather`]), only then.
//! 5. One decode step runs every row: one token each, sampled per job; a job that reaches
//!    `max_tokens`, a stop string or an end-of-sequence token ends, and its row is free at the
//!    next turn.
//!
//! Batched rows give the logits a job gets alone within float rounding (left-padded with mask
//! 0 and their own positions, or at their own mask sum, as the layout wants),
//! so greedy jobs give the same text batched or alone.
//!
//! Each job's text reaches its relay (`jobs::generate`) as [`Event`]s: pieces as they are
//! decoded ([`detokenize`]), then the end with its reason and token counts. A failed run fails
//! the jobs in it, and only those.

pub mod caches;
pub mod detokenize;
pub mod sampling;
pub mod slots;
pub mod spec;

use std::collections::VecDeque;
use std::sync::Arc;
#[cfg(test)]
use std::time::Duration;
use std::time::{Instant, SystemTime};

use ort::value::DynValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::caches::{Buffer, Caches, Geometry};
use self::detokenize::TextStream;
use self::sampling::{Sampler, SamplingParams};
use self::slots::Slots;
use self::spec::{element_size, CacheLayout, DecoderSpec};
use crate::protocol::{DataType, Tensor, TensorData};
use crate::runtime::{to_ort, Backend, SharedSession};
use crate::telemetry::generation::{VersionGeneration, FINISH_REASONS};

/// Why a job's generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_tokens` generated.
    Length,
    /// A stop string was generated (the text ends before it).
    Stop,
    /// The model's end-of-sequence token.
    Eos,
    /// The job's deadline passed.
    Deadline,
    /// A cancel message named the job.
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        FINISH_REASONS[self as usize]
    }
}

/// A job for the engine: its prompt's tokens and how to continue them.
pub struct GenerationJob {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub deadline: Option<SystemTime>,
    /// Cancelled by a cancel message: the job ends at the next step with `cancelled`.
    pub cancel: CancellationToken,
    /// Where its text goes; once the receiver is gone, the job is dropped unanswered.
    pub events: mpsc::UnboundedSender<Event>,
    pub received: Instant,
}

/// What the engine tells a job's relay.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// New text (never empty).
    Piece(String),
    /// The end: the last piece (possibly empty) and the counts.
    Done(Finished),
    /// ONNX Runtime failed a run the job was in.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub piece: String,
    pub reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// A running decoder version's engine: where its jobs go.
pub struct Generator {
    inbox: mpsc::UnboundedSender<GenerationJob>,
    pub spec: Arc<DecoderSpec>,
    pub tokenizer: Arc<tokenizers::Tokenizer>,
    /// Bytes of the tokenizer's longest vocabulary entry (as its `tokenizer.json` writes it,
    /// never shorter than the text it stands for).
    longest_token: usize,
    /// Whether the engine writes the caches in place ([`slots`]) or gathers them.
    in_place: bool,
}

impl Generator {
    /// Starts the engine of `spec` on `backend`, on a thread of its own. It runs until the
    /// generator is dropped (the version unloaded) and the jobs it holds are done.
    pub fn start(
        name: &str,
        spec: Arc<DecoderSpec>,
        tokenizer: Arc<tokenizers::Tokenizer>,
        backend: Box<dyn Backend>,
        metrics: VersionGeneration,
    ) -> Result<Generator, String> {
        let mut engine = Engine::new(spec.clone(), tokenizer.clone(), backend, metrics)?;
        engine.check()?;
        let in_place = engine.slots.is_some();
        let (inbox, receiver) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name(format!("gen-{name}"))
            .spawn(move || engine.serve(receiver))
            .map_err(|e| format!("generation thread: {e}"))?;
        let longest_token = tokenizer
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(1);
        Ok(Generator {
            inbox,
            spec,
            tokenizer,
            longest_token,
            in_place,
        })
    }

    /// Bytes of prompt beyond which it cannot fit the context: twice the context of the
    /// longest tokens (twice: a normalizer may shorten text before it is split into tokens).
    pub fn prompt_bytes_limit(&self) -> usize {
        self.spec
            .context_length
            .saturating_mul(self.longest_token)
            .saturating_mul(2)
    }

    /// What metadata says of the generation: context, layout, budgets and defaults, and
    /// whether the caches are written in place (`kv_cache`: `in_place` or `gathered`).
    pub fn describe(&self) -> serde_json::Value {
        let mut described = self.spec.describe();
        let kv_cache = if self.in_place {
            "in_place"
        } else {
            "gathered"
        };
        described["kv_cache"] = kv_cache.into();
        described
    }

    /// Hands `job` to the engine; false when the engine has stopped (the job is dropped).
    pub fn submit(&self, job: GenerationJob) -> bool {
        self.inbox.send(job).is_ok()
    }
}

/// A job with its sampler and text, from its prefill to its end.
struct Running {
    job: GenerationJob,
    sampler: Sampler,
    text: TextStream,
    generated: usize,
    last_token: Option<Instant>,
}

/// A job whose prompt is being prefilled, alone.
struct Prefill {
    running: Running,
    caches: Caches,
    /// Prompt tokens prefilled so far.
    done: usize,
}

/// A decoding row: its job, the tokens its caches hold, and the token it feeds next.
struct Row {
    running: Running,
    len: usize,
    next: u32,
    ended: bool,
}

struct Engine {
    spec: Arc<DecoderSpec>,
    tokenizer: Arc<tokenizers::Tokenizer>,
    backend: Box<dyn Backend>,
    /// The backend's ONNX Runtime session, run on values kept between steps.
    session: Option<Arc<SharedSession>>,
    metrics: VersionGeneration,
    geometry: Geometry,
    /// Index of `logits` among the backend's outputs, then of each present cache, in the
    /// order of [`Caches::buffers`].
    logits_at: usize,
    present_at: Vec<usize>,
    waiting: VecDeque<GenerationJob>,
    prefilling: VecDeque<Prefill>,
    rows: Vec<Row>,
    caches: Caches,
    /// For a decoder that writes its caches in place (GroupQueryAttention on the CPU): the
    /// rows' caches, used instead of `caches` once the check at load found them to give the
    /// same logits.
    slots: Option<Slots>,
}

impl Engine {
    fn new(
        spec: Arc<DecoderSpec>,
        tokenizer: Arc<tokenizers::Tokenizer>,
        backend: Box<dyn Backend>,
        metrics: VersionGeneration,
    ) -> Result<Engine, String> {
        let outputs = &backend.signature().outputs;
        let at = |name: &str| {
            outputs
                .iter()
                .position(|o| o.name == name)
                .ok_or_else(|| format!("decoder has no output {name}"))
        };
        let logits_at = at(&spec.logits)?;
        let mut present_at = Vec::new();
        for names in &spec.caches {
            present_at.push(at(&names[2])?);
            present_at.push(at(&names[3])?);
        }
        let geometry = Geometry {
            kv_heads: spec.kv_heads,
            position_bytes: spec.head_size * element_size(spec.kv_type),
            layout: spec.layout,
        };
        Ok(Engine {
            caches: Caches::zeros(present_at.len(), 0, 0, &geometry),
            session: backend.shared_session(),
            spec,
            tokenizer,
            backend,
            metrics,
            geometry,
            logits_at,
            present_at,
            waiting: VecDeque::new(),
            prefilling: VecDeque::new(),
            rows: Vec::new(),
            slots: None,
        })
    }

    fn serve(mut self, mut inbox: mpsc::UnboundedReceiver<GenerationJob>) {
        let mut open = true;
        loop {
            let idle =
                self.waiting.is_empty() && self.prefilling.is_empty() && self.rows.is_empty();
            if idle {
                if !open {
                    return;
                }
                match inbox.blocking_recv() {
                    Some(job) => self.waiting.push_back(job),
                    None => return,
                }
            }
            loop {
                match inbox.try_recv() {
                    Ok(job) => self.waiting.push_back(job),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            // A panic in a turn (a model returning what no check foresaw) fails the jobs the
            // engine holds, not the engine: the version keeps serving the next ones.
            let turn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.turn()));
            if let Err(panic) = turn {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a decode step panicked".into());
                self.fail_all(&format!("generation engine: {message}"));
            }
        }
    }

    /// Fails every job the engine holds with `message` and starts again empty.
    fn fail_all(&mut self, message: &str) {
        let events = self
            .rows
            .drain(..)
            .map(|r| r.running.job.events)
            .chain(self.prefilling.drain(..).map(|p| p.running.job.events))
            .chain(self.waiting.drain(..).map(|j| j.events));
        for sender in events {
            let _ = sender.send(Event::Failed(message.to_string()));
        }
        self.caches = Caches::zeros(self.present_at.len(), 0, 0, &self.geometry);
    }

    /// One turn: the waiting jobs that ended leave, new ones prefill within the budget, the
    /// rows change, one decode step runs.
    fn turn(&mut self) {
        let now = SystemTime::now();
        let mut still = VecDeque::with_capacity(self.waiting.len());
        for job in self.waiting.drain(..) {
            match ended(&job, now) {
                None => still.push_back(job),
                Some(reason) => {
                    let tokens = job.prompt.len();
                    finish_unstarted(&self.metrics, job, reason, tokens);
                }
            }
        }
        self.waiting = still;
        let rows = self.spec.budgets.max_active_rows;
        while self.rows.len() + self.prefilling.len() < rows {
            let Some(job) = self.waiting.pop_front() else {
                break;
            };
            self.prefilling.push_back(self.start_prefill(job));
        }
        let joined = self.prefill();
        for row in &mut self.rows {
            if let Some(reason) = ended(&row.running.job, now) {
                row.ended = true;
                finish(&self.metrics, &mut row.running, reason);
            }
        }
        if !joined.is_empty() || self.rows.iter().any(|r| r.ended) {
            self.regather(joined);
        }
        self.metrics.waiting_jobs.set(self.waiting.len() as i64);
        self.metrics
            .active_rows
            .set((self.rows.len() + self.prefilling.len()) as i64);
        // The buffers hold every row at the longest row's width, or a slot of the context.
        let held = match self.slots {
            Some(_) => (self.rows.len() * self.spec.context_length) as u64,
            None => (self.caches.rows * self.caches.width) as u64,
        };
        self.metrics
            .kv_cache_bytes
            .set((held * self.spec.kv_bytes_per_token()) as i64);
        if !self.rows.is_empty() {
            self.decode();
        }
    }

    fn start_prefill(&self, job: GenerationJob) -> Prefill {
        let width = 0;
        let text = TextStream::new(self.tokenizer.clone(), &job.prompt, job.stop.clone());
        Prefill {
            caches: Caches::zeros(self.present_at.len(), 1, width, &self.geometry),
            running: Running {
                sampler: Sampler::new(job.sampling),
                text,
                generated: 0,
                last_token: None,
                job,
            },
            done: 0,
        }
    }

    /// Prefills prompts, in order, within `max_prefill_tokens`; returns the rows whose prompt
    /// is done and whose job goes on.
    fn prefill(&mut self) -> Vec<(Row, Caches)> {
        let mut budget = self.spec.budgets.max_prefill_tokens;
        let mut joined = Vec::new();
        let now = SystemTime::now();
        let mut i = 0;
        while budget > 0 && i < self.prefilling.len() {
            let p = &mut self.prefilling[i];
            if let Some(reason) = ended(&p.running.job, now) {
                let mut p = self.prefilling.remove(i).expect("index in range");
                finish(&self.metrics, &mut p.running, reason);
                continue;
            }
            let prompt_len = p.running.job.prompt.len();
            let chunk = (prompt_len - p.done).min(budget);
            budget -= chunk;
            let from = p.done;
            let ids: Vec<i64> = p.running.job.prompt[from..from + chunk]
                .iter()
                .map(|&t| i64::from(t))
                .collect();
            let mask = vec![1i64; from + chunk];
            let positions: Vec<i64> = (from..from + chunk).map(|p| p as i64).collect();
            let caches = std::mem::take(&mut p.caches);
            match self.forward(ids, 1, chunk, mask, from + chunk, positions, caches) {
                Ok((logits, caches)) => {
                    let p = &mut self.prefilling[i];
                    p.caches = caches;
                    p.done += chunk;
                    if p.done < prompt_len {
                        i += 1;
                        continue;
                    }
                    let mut p = self.prefilling.remove(i).expect("index in range");
                    self.metrics.prompt_tokens.inc_by(prompt_len as u64);
                    let token = p.running.sampler.next(&logits);
                    if let Some(reason) = self.take_token(&mut p.running, token, prompt_len) {
                        finish(&self.metrics, &mut p.running, reason);
                        continue;
                    }
                    let row = Row {
                        running: p.running,
                        len: prompt_len,
                        next: token,
                        ended: false,
                    };
                    // Its caches travel with it until the rows are gathered.
                    joined.push((row, p.caches));
                }
                Err(error) => {
                    let p = self.prefilling.remove(i).expect("index in range");
                    let _ = p.running.job.events.send(Event::Failed(error));
                }
            }
        }
        joined
    }

    /// Counts token `token` of `running`, whose row will hold `len` tokens once it is fed;
    /// sends the text it completes. Returns why the job ends, if it does.
    fn take_token(&self, running: &mut Running, token: u32, len: usize) -> Option<FinishReason> {
        let now = Instant::now();
        match running.last_token {
            None => self
                .metrics
                .time_to_first_token
                .observe((now - running.job.received).as_secs_f64()),
            Some(last) => self
                .metrics
                .time_per_output_token
                .observe((now - last).as_secs_f64()),
        }
        running.last_token = Some(now);
        running.generated += 1;
        self.metrics.generated_tokens.inc();
        if self.spec.eos_token_ids.contains(&token) {
            return Some(FinishReason::Eos);
        }
        let added = running.text.push(token);
        if !added.piece.is_empty() {
            let _ = running.job.events.send(Event::Piece(added.piece));
        }
        if added.stopped {
            return Some(FinishReason::Stop);
        }
        if running.generated >= running.job.max_tokens || len + 1 > self.spec.context_length {
            return Some(FinishReason::Length);
        }
        None
    }
}

impl Engine {
    /// Runs a one-token prompt and one decode step, as every job will: a decoder that cannot is
    /// refused at load, not at its first job.
    /// For a decoder that may write its caches in place (GroupQueryAttention, on a CPU
    /// session), the step is also run in place: if it gives the same logits, the engine keeps
    /// its caches in [`Slots`] from then on; if not, it gathers them, and says why.
    fn check(&mut self) -> Result<(), String> {
        let caches = Caches::zeros(self.present_at.len(), 1, 0, &self.geometry);
        let (logits, caches) = self.forward(vec![0], 1, 1, vec![1], 1, vec![0], caches)?;
        let tokens = self.tokenizer.get_vocab_size(true);
        if logits.len() < tokens {
            return Err(format!(
                "tokenizer.json has {tokens} tokens, the decoder's {} only {}",
                self.spec.logits,
                logits.len()
            ));
        }
        let on_cpu = self.session.as_ref().is_some_and(|s| s.device().is_none());
        let mut slots = (self.spec.layout == CacheLayout::RowLengths && on_cpu).then(|| {
            Slots::new(
                self.present_at.len(),
                self.spec.budgets.max_active_rows,
                self.spec.context_length,
                self.geometry,
                self.spec.kv_type,
            )
        });
        if let Some(slots) = &mut slots {
            slots.put(0, &caches, 0, 1);
        }
        let (gathered, _) = self
            .forward(vec![0], 1, 1, vec![1, 1], 2, vec![1], caches)
            .map_err(|e| format!("decoder check (a one-token prompt, then one step): {e}"))?;
        if slots.is_some() {
            self.slots = slots;
            let kept = match self.step_in_place(&[0], &[1, 1], 2, &[1]) {
                Ok(in_place) => {
                    let most = in_place
                        .iter()
                        .zip(&gathered)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    if in_place.len() == gathered.len() && most <= 1e-4 {
                        Ok(())
                    } else {
                        Err(format!("logits differ by {most} from the gathered caches'"))
                    }
                }
                Err(e) => Err(e),
            };
            if let Err(why) = kept {
                tracing::warn!(reason = %why, "Decoder caches cannot be written in place; gathering them at each step instead");
                self.slots = None;
            }
        }
        Ok(())
    }

    /// The rows that did not end, then those that `joined`, with their caches gathered into
    /// one batch.
    fn regather(&mut self, joined: Vec<(Row, Caches)>) {
        if let Some(slots) = &mut self.slots {
            // In place: an ended row's slot takes the last row; joining rows take the next
            // slots. Only the rows that move are copied.
            let rows = &mut self.rows;
            let mut i = 0;
            while i < rows.len() {
                if !rows[i].ended {
                    i += 1;
                    continue;
                }
                rows.swap_remove(i);
                if i < rows.len() {
                    slots.move_row(rows.len(), i, rows[i].len);
                }
            }
            for (row, caches) in joined {
                slots.put(rows.len(), &caches, 0, row.len);
                rows.push(row);
            }
            return;
        }
        let old = std::mem::take(&mut self.caches);
        let rows = std::mem::take(&mut self.rows);
        let mut kept = Vec::with_capacity(rows.len() + joined.len());
        let mut sources = Vec::with_capacity(rows.len() + joined.len());
        for (i, row) in rows.into_iter().enumerate() {
            if !row.ended {
                sources.push((&old, i, row.len));
                kept.push(row);
            }
        }
        let (joined_rows, joined_caches): (Vec<Row>, Vec<Caches>) = joined.into_iter().unzip();
        for (caches, row) in joined_caches.iter().zip(&joined_rows) {
            sources.push((caches, 0, row.len));
        }
        kept.extend(joined_rows);
        let width = kept.iter().map(|r| r.len).max().unwrap_or(0);
        self.caches = if sources.is_empty() {
            Caches::zeros(self.present_at.len(), 0, width, &self.geometry)
        } else {
            Caches::gather(&sources, width, &self.geometry)
        };
        self.rows = kept;
    }

    /// One token for every row.
    fn decode(&mut self) {
        let rows = self.rows.len();
        let ids: Vec<i64> = self.rows.iter().map(|r| i64::from(r.next)).collect();
        let positions: Vec<i64> = self.rows.iter().map(|r| r.len as i64).collect();
        let (mask, width) = match self.spec.layout {
            CacheLayout::LeftPadded => {
                // Left-padded: each row's tokens end at the right, the new one after them.
                let width = self.caches.width + 1;
                let mut mask = vec![0i64; rows * width];
                for (r, row) in self.rows.iter().enumerate() {
                    mask[r * width + width - row.len - 1..(r + 1) * width].fill(1);
                }
                (mask, width)
            }
            CacheLayout::RowLengths => {
                // A row's mask sum is its length with the new token: where it is written.
                let width = self.rows.iter().map(|r| r.len).max().unwrap_or(0) + 1;
                let mut mask = vec![0i64; rows * width];
                for (r, row) in self.rows.iter().enumerate() {
                    mask[r * width..r * width + row.len + 1].fill(1);
                }
                (mask, width)
            }
        };
        let result = if self.slots.is_some() {
            self.step_in_place(&ids, &mask, width, &positions)
        } else {
            let caches = std::mem::take(&mut self.caches);
            self.forward(ids, rows, 1, mask, width, positions, caches)
                .map(|(logits, caches)| {
                    self.caches = caches;
                    logits
                })
        };
        match result {
            Ok(logits) => {
                let vocab = logits.len() / rows.max(1);
                let mut rows = std::mem::take(&mut self.rows);
                for (r, row) in rows.iter_mut().enumerate() {
                    row.len += 1;
                    let token = row
                        .running
                        .sampler
                        .next(&logits[r * vocab..(r + 1) * vocab]);
                    row.next = token;
                    if let Some(reason) = self.take_token(&mut row.running, token, row.len) {
                        row.ended = true;
                        finish(&self.metrics, &mut row.running, reason);
                    }
                }
                self.rows = rows;
            }
            Err(error) => {
                // The run failed every row in it: each job gets the error; the batch is gone.
                for row in self.rows.drain(..) {
                    let _ = row.running.job.events.send(Event::Failed(error.clone()));
                }
                self.caches = Caches::zeros(self.present_at.len(), 0, 0, &self.geometry);
            }
        }
    }

    /// Runs the decoder on `rows` rows of `seq` new tokens: returns the logits of each row's
    /// last position (`rows × vocabulary`) and the present caches.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        ids: Vec<i64>,
        rows: usize,
        seq: usize,
        mask: Vec<i64>,
        mask_width: usize,
        positions: Vec<i64>,
        caches: Caches,
    ) -> Result<(Vec<f32>, Caches), String> {
        let spec = &self.spec;
        let mut inputs = token_inputs(spec, &ids, seq, &mask, mask_width, &positions);
        let past_width = caches.width;
        let shape = vec![rows, spec.kv_heads, past_width, spec.head_size];
        let cache_tensor = |i: usize, bytes: Vec<u8>| Tensor {
            name: spec.caches[i / 2][i % 2].clone(),
            datatype: spec.kv_type,
            shape: shape.clone(),
            data: TensorData::Fixed(bytes),
        };
        // Outputs, in signature order: kept as ONNX Runtime made them on a session (the present
        // caches are the next run's inputs as they are), else as the backend returns them.
        let outputs: Vec<Buffer> = match self.session.clone() {
            Some(session) => {
                let mut values = Vec::with_capacity(inputs.len() + caches.buffers.len());
                for tensor in &inputs {
                    values.push((
                        tensor.name.as_str(),
                        to_ort(tensor).map_err(|e| e.to_string())?,
                    ));
                }
                for (i, buffer) in caches.buffers.into_iter().enumerate() {
                    let value = match buffer {
                        Buffer::Value(value) => value,
                        host => {
                            let bytes = host.into_bytes();
                            to_ort(&cache_tensor(i, bytes)).map_err(|e| e.to_string())?
                        }
                    };
                    values.push((spec.caches[i / 2][i % 2].as_str(), value));
                }
                let refs: Vec<(&str, &ort::value::DynValue)> =
                    values.iter().map(|(name, value)| (*name, value)).collect();
                let outputs = session.run_values(&refs).map_err(|e| e.to_string())?;
                outputs.into_iter().map(Buffer::Value).collect()
            }
            None => {
                for (i, buffer) in caches.buffers.into_iter().enumerate() {
                    inputs.push(cache_tensor(i, buffer.into_bytes()));
                }
                let outputs = self.backend.infer(&inputs).map_err(|e| e.to_string())?;
                outputs.into_iter().map(Buffer::Returned).collect()
            }
        };
        let names = &self.backend.signature().outputs;
        let last_logits = last_logits(&outputs[self.logits_at], rows, seq, &spec.logits)?;
        let mut outputs: Vec<Option<Buffer>> = outputs.into_iter().map(Some).collect();
        let mut present = Caches {
            buffers: Vec::with_capacity(self.present_at.len()),
            rows,
            width: 0,
        };
        // Each run returns the caches one run longer: what the rows' lengths rely on.
        let expected = past_width + seq;
        for &at in &self.present_at {
            let buffer = outputs[at].take().ok_or("an output named twice")?;
            let (shape, _, _) = buffer.view()?;
            match shape.as_slice() {
                &[r, h, w, s]
                    if r == rows && h == spec.kv_heads && w == expected && s == spec.head_size => {}
                other => {
                    return Err(format!(
                    "decoder returned {} of shape {other:?}, expected [{rows}, {}, {expected}, {}]",
                    names[at].name, spec.kv_heads, spec.head_size
                ))
                }
            }
            present.width = expected;
            present.buffers.push(buffer);
        }
        Ok((last_logits, present))
    }
}

impl Engine {
    /// One decode step on the caches in [`Slots`], written in place: `ids` one token per row,
    /// `mask` `[rows, width]`, `positions` one per row (if the decoder takes them). Returns
    /// each row's logits.
    fn step_in_place(
        &mut self,
        ids: &[i64],
        mask: &[i64],
        width: usize,
        positions: &[i64],
    ) -> Result<Vec<f32>, String> {
        let rows = ids.len();
        let spec = self.spec.clone();
        let session = self
            .session
            .clone()
            .ok_or("in-place caches need a session")?;
        let slots = self.slots.as_mut().ok_or("no slots")?;
        let inputs = token_inputs(&spec, ids, 1, mask, width, positions);
        let values = inputs
            .iter()
            .map(|t| to_ort(t).map(|v| (t.name.as_str(), v)))
            .collect::<Result<Vec<(&str, DynValue)>, _>>()
            .map_err(|e| e.to_string())?;
        let refs: Vec<(&str, &DynValue)> = values.iter().map(|(n, v)| (*n, v)).collect();
        let views = slots.views(rows)?;
        let past: Vec<_> = views
            .iter()
            .enumerate()
            .map(|(i, v)| (spec.caches[i / 2][i % 2].as_str(), v))
            .collect();
        let present: Vec<_> = views
            .iter()
            .enumerate()
            .map(|(i, v)| (spec.caches[i / 2][2 + i % 2].as_str(), v))
            .collect();
        let mut outputs = session
            .run_into(&refs, &past, &present)
            .map_err(|e| e.to_string())?;
        let logits = outputs
            .get_mut(self.logits_at)
            .and_then(Option::take)
            .ok_or_else(|| format!("decoder returned no {}", spec.logits))?;
        last_logits(&Buffer::Value(logits), rows, 1, &spec.logits)
    }
}

/// A run's inputs other than the caches: `ids` (`seq` tokens a row), the attention mask
/// (`mask_width` a row) and, if the decoder takes them, the tokens' positions.
fn token_inputs(
    spec: &DecoderSpec,
    ids: &[i64],
    seq: usize,
    mask: &[i64],
    mask_width: usize,
    positions: &[i64],
) -> Vec<Tensor> {
    let rows = ids.len() / seq.max(1);
    let mut inputs = vec![
        Tensor::from_i64(&spec.input_ids, vec![rows, seq], ids),
        Tensor::from_i64(&spec.attention_mask, vec![rows, mask_width], mask),
    ];
    if let Some(name) = &spec.position_ids {
        inputs.push(Tensor::from_i64(name, vec![rows, seq], positions));
    }
    inputs
}

/// The logits of each row's last position, as FP32, from a run's `logits` output
/// (`[rows, seq, vocabulary]`).
fn last_logits(output: &Buffer, rows: usize, seq: usize, name: &str) -> Result<Vec<f32>, String> {
    let (shape, datatype, bytes) = output.view()?;
    let (vocab, last) = match shape.as_slice() {
        &[r, s, v] if r == rows && s == seq && v > 0 => (v, s - 1),
        other => {
            return Err(format!(
                "decoder returned {name} of shape {other:?}, expected [{rows}, {seq}, vocabulary]"
            ))
        }
    };
    let mut logits = Vec::with_capacity(rows * vocab);
    for r in 0..rows {
        let at = (r * seq + last) * vocab;
        match datatype {
            DataType::F16 => logits.extend(
                bytes[at * 2..(at + vocab) * 2]
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
            ),
            _ => logits.extend(
                bytes[at * 4..(at + vocab) * 4]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
        }
    }
    Ok(logits)
}

/// Why `job` must end now without another token, if it must.
fn ended(job: &GenerationJob, now: SystemTime) -> Option<FinishReason> {
    if job.cancel.is_cancelled() || job.events.is_closed() {
        return Some(FinishReason::Cancelled);
    }
    if job.deadline.is_some_and(|d| now >= d) {
        return Some(FinishReason::Deadline);
    }
    None
}

/// Ends a running job: the text held back (unless a stop string ended it), the reason, the
/// counts.
fn finish(metrics: &VersionGeneration, running: &mut Running, reason: FinishReason) {
    let piece = match reason {
        FinishReason::Stop => String::new(),
        _ => running.text.finish().piece,
    };
    metrics.finished[reason as usize].inc();
    let _ = running.job.events.send(Event::Done(Finished {
        piece,
        reason,
        prompt_tokens: running.job.prompt.len(),
        completion_tokens: running.generated,
    }));
}

/// Ends a job that never started: no text.
fn finish_unstarted(
    metrics: &VersionGeneration,
    job: GenerationJob,
    reason: FinishReason,
    prompt_tokens: usize,
) {
    metrics.finished[reason as usize].inc();
    let _ = job.events.send(Event::Done(Finished {
        piece: String::new(),
        reason,
        prompt_tokens,
        completion_tokens: 0,
    }));
}

#[cfg(test)]
mod tests {
    use super::spec::GenerateBudgets;
    use super::*;
    use crate::protocol::{ModelSignature, TensorSpec};
    use crate::runtime::RuntimeError;
    use crate::telemetry::Metrics;

    const VOCAB: usize = 512;

    /// A one-layer decoder whose next token is always the fed token + 1, whose caches are the
    /// past ones and one zero position per new token; its `break_at`-th run returns a
    /// cache one position short.
    struct Counter {
        signature: ModelSignature,
        runs: usize,
        break_at: usize,
    }

    fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
        }
    }

    impl Counter {
        fn new(break_at: usize) -> Counter {
            let cache = |n: &str| spec(n, DataType::F32, &[-1, 1, -1, 1]);
            Counter {
                signature: ModelSignature {
                    inputs: vec![
                        spec("input_ids", DataType::I64, &[-1, -1]),
                        spec("attention_mask", DataType::I64, &[-1, -1]),
                        spec("position_ids", DataType::I64, &[-1, -1]),
                        cache("past_key_values.0.key"),
                        cache("past_key_values.0.value"),
                    ],
                    outputs: vec![
                        spec("logits", DataType::F32, &[-1, -1, VOCAB as i64]),
                        cache("present.0.key"),
                        cache("present.0.value"),
                    ],
                },
                runs: 0,
                break_at,
            }
        }
    }

    impl Backend for Counter {
        fn signature(&self) -> &ModelSignature {
            &self.signature
        }

        fn infer(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, RuntimeError> {
            self.runs += 1;
            let ids = inputs[0].to_i64_vec().unwrap();
            let (rows, seq) = (inputs[0].shape[0], inputs[0].shape[1]);
            let past = inputs[3].shape[2];
            let mut logits = vec![0f32; rows * seq * VOCAB];
            for (i, id) in ids.iter().enumerate() {
                logits[i * VOCAB + (*id as usize + 1) % VOCAB] = 1.0;
            }
            let width = if self.runs == self.break_at {
                past + seq - 1
            } else {
                past + seq
            };
            let present = |name: &str| {
                Tensor::from_f32(name, vec![rows, 1, width, 1], &vec![0.0; rows * width])
            };
            Ok(vec![
                Tensor::from_f32("logits", vec![rows, seq, VOCAB], &logits),
                present("present.0.key"),
                present("present.0.value"),
            ])
        }
    }

    fn generator(break_at: usize) -> Generator {
        let backend = Counter::new(break_at);
        let decoder = DecoderSpec {
            layout: CacheLayout::LeftPadded,
            found_by: "past_key_values",
            input_ids: "input_ids".into(),
            attention_mask: "attention_mask".into(),
            position_ids: Some("position_ids".into()),
            caches: vec![[
                "past_key_values.0.key",
                "past_key_values.0.value",
                "present.0.key",
                "present.0.value",
            ]
            .map(String::from)],
            logits: "logits".into(),
            kv_heads: 1,
            head_size: 1,
            kv_type: DataType::F32,
            logits_type: DataType::F32,
            context_length: 64,
            eos_token_ids: vec![2],
            budgets: GenerateBudgets::from_config(None).unwrap(),
        };
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/storyteller/1/tokenizer.json"
        );
        let tokenizer = tokenizers::Tokenizer::from_file(path).unwrap();
        let metrics = Metrics::new("test", "test");
        Generator::start(
            "test",
            Arc::new(decoder),
            Arc::new(tokenizer),
            Box::new(backend),
            metrics.generation.version("m", "1"),
        )
        .unwrap()
    }

    fn job(prompt: Vec<u32>, max_tokens: usize) -> (GenerationJob, mpsc::UnboundedReceiver<Event>) {
        let (events, receiver) = mpsc::unbounded_channel();
        let job = GenerationJob {
            prompt,
            max_tokens,
            sampling: SamplingParams {
                temperature: 0.0,
                top_k: 0,
                top_p: 1.0,
                seed: None,
            },
            stop: Vec::new(),
            deadline: None,
            cancel: CancellationToken::new(),
            events,
            received: Instant::now(),
        };
        (job, receiver)
    }

    fn end(receiver: &mut mpsc::UnboundedReceiver<Event>) -> Event {
        loop {
            match receiver.blocking_recv().expect("the engine answers") {
                Event::Piece(_) => continue,
                other => return other,
            }
        }
    }

    #[test]
    fn tokens_count_up_to_the_end_of_sequence_and_to_max_tokens() {
        let generator = generator(usize::MAX);
        // From 300 the next tokens are 301, 302, …: max_tokens ends it.
        let (a, mut a_events) = job(vec![1, 300], 5);
        // From 0 the next token is 1, then 2: the end-of-sequence id.
        let (b, mut b_events) = job(vec![1, 0], 5);
        assert!(generator.submit(a) && generator.submit(b));
        let Event::Done(a) = end(&mut a_events) else {
            panic!()
        };
        assert_eq!(
            (a.reason, a.completion_tokens, a.prompt_tokens),
            (FinishReason::Length, 5, 2)
        );
        let Event::Done(b) = end(&mut b_events) else {
            panic!()
        };
        assert_eq!((b.reason, b.completion_tokens), (FinishReason::Eos, 2));
    }

    #[test]
    fn a_run_that_breaks_the_caches_fails_its_jobs_and_the_engine_goes_on() {
        // The check at start takes 2 runs; the 4th run (the first decode step) breaks.
        let generator = generator(4);
        let (a, mut a_events) = job(vec![1, 300], 5);
        assert!(generator.submit(a));
        let Event::Failed(message) = end(&mut a_events) else {
            panic!("not failed")
        };
        assert!(message.contains("present.0.key"), "{message}");
        let (b, mut b_events) = job(vec![1, 300], 1);
        assert!(generator.submit(b));
        // One token comes from the prefill alone: no decode step, nothing broken.
        let Event::Done(b) = end(&mut b_events) else {
            panic!("the engine stopped")
        };
        assert_eq!(b.completion_tokens, 1);
    }

    #[test]
    fn a_cancelled_or_late_job_ends_with_its_reason() {
        let generator = generator(usize::MAX);
        let (late, mut late_events) = job(vec![1, 300], 5);
        let late = GenerationJob {
            deadline: Some(SystemTime::now() - Duration::from_secs(1)),
            ..late
        };
        let (cancelled, mut cancelled_events) = job(vec![1, 300], 5);
        cancelled.cancel.cancel();
        assert!(generator.submit(late) && generator.submit(cancelled));
        let Event::Done(late) = end(&mut late_events) else {
            panic!()
        };
        assert_eq!(
            (late.reason, late.completion_tokens),
            (FinishReason::Deadline, 0)
        );
        let Event::Done(c) = end(&mut cancelled_events) else {
            panic!()
        };
        assert_eq!(c.reason, FinishReason::Cancelled);
    }
}
