//! Cancel messages: a producer publishes `{"id": "<job id>"}` (and optionally `"model"`) to the
//! fanout exchange `<prefix>.cancel`; every worker has an exclusive queue bound to it, and the
//! worker that holds a generation job of that id ends it at the next step with finish reason
//! `cancelled` (docs/PROTOCOL.md "Cancelling a generation job"). A worker that holds no such job
//! drops the message. Cancel messages are never answered, and a bad one is dropped with a log.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lapin::types::FieldTable;
use lapin::Channel;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::answerer::Answerer;
use super::inflight::Delivered;
use super::kind::{Acks, Consume, ConsumerEnd, OnLost};
use crate::broker::publisher::submit;
use crate::broker::{Command, Disposition, Settlement, Topology};

/// A job on the board: its key (to take it off), its model, the token that cancels it.
type Held = (u64, Arc<str>, CancellationToken);

/// The generation jobs this worker holds that a cancel message can reach, by job id.
#[derive(Default)]
pub struct CancelBoard {
    jobs: Mutex<HashMap<String, Vec<Held>>>,
    next: AtomicU64,
}

/// A job's place on the board; dropping it takes the job off.
pub struct OnBoard {
    board: Arc<CancelBoard>,
    id: String,
    key: u64,
}

impl CancelBoard {
    /// Puts job `id` of `model` on the board until the returned guard is dropped.
    pub fn register(
        self: &Arc<Self>,
        id: &str,
        model: &Arc<str>,
        token: CancellationToken,
    ) -> OnBoard {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.entry(id.to_string())
            .or_default()
            .push((key, model.clone(), token));
        OnBoard {
            board: self.clone(),
            id: id.to_string(),
            key,
        }
    }

    /// Cancels every job `id` holds (of `model` only, when given); returns how many.
    pub fn cancel(&self, id: &str, model: Option<&str>) -> usize {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(held) = jobs.get(id) else { return 0 };
        let mut n = 0;
        for (_, job_model, token) in held {
            if model.is_none_or(|m| m == job_model.as_ref()) {
                token.cancel();
                n += 1;
            }
        }
        n
    }
}

impl Drop for OnBoard {
    fn drop(&mut self) {
        let mut jobs = self.board.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = jobs.get_mut(&self.id) {
            held.retain(|(key, _, _)| *key != self.key);
            if held.is_empty() {
                jobs.remove(&self.id);
            }
        }
    }
}

/// The cancel kind of job: one consumer, `cancel`, on this worker's queue of the cancel
/// exchange.
pub struct CancelContext {
    pub board: Arc<CancelBoard>,
    pub topology: Topology,
    pub answerer: Arc<Answerer>,
    wanted: watch::Sender<BTreeSet<String>>,
}

impl CancelContext {
    /// Started again when lost, like a model's consumer.
    pub const ON_LOST: OnLost = OnLost::Restart;

    pub fn new(
        board: Arc<CancelBoard>,
        topology: Topology,
        answerer: Arc<Answerer>,
    ) -> CancelContext {
        let wanted = watch::Sender::new(BTreeSet::from(["cancel".to_string()]));
        CancelContext {
            board,
            topology,
            answerer,
            wanted,
        }
    }

    pub fn wanted(&self) -> watch::Receiver<BTreeSet<String>> {
        self.wanted.subscribe()
    }

    /// Declares this worker's queue on the cancel exchange.
    pub async fn open(&self, channel: &Channel) -> Result<Consume, ConsumerEnd> {
        let queue = self
            .topology
            .declare_cancel_queue(channel)
            .await
            .map_err(|e| ConsumerEnd::DeclareRefused(e.to_string()))?;
        Ok(Consume {
            queue,
            prefetch: 256,
            arguments: FieldTable::default(),
            acks: Acks::Coalesced,
        })
    }

    /// Cancels the jobs a message names, and acks it.
    pub fn handle(&self, delivered: Delivered) {
        match parse_cancel(&delivered.body) {
            Ok((id, model)) => {
                let n = self.board.cancel(&id, model.as_deref());
                if n > 0 {
                    tracing::info!(id = %id, jobs = n, "Generation cancelled by a cancel message");
                }
            }
            Err(error) => tracing::warn!(%error, "Cancel message dropped"),
        }
        let settlement = Settlement {
            delivery: delivered.delivery,
            generation: delivered.generation,
            disposition: Disposition::Answer,
            on_done: None,
        };
        submit(self.answerer.commands(), Command::Settle(settlement));
    }
}

/// Bytes of a cancel message at most: an id and a model name, with room to spare.
const MAX_CANCEL_BYTES: usize = 64 << 10;

/// `{"id": "...", "model": "..."}` (`model` optional); the error names the field.
pub fn parse_cancel(body: &[u8]) -> Result<(String, Option<String>), String> {
    if body.len() > MAX_CANCEL_BYTES {
        return Err(format!(
            "body: {} bytes, at most {MAX_CANCEL_BYTES}",
            body.len()
        ));
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("body: not JSON ({e})"))?;
    let object = value.as_object().ok_or("body: expected a JSON object")?;
    if let Some(key) = object.keys().find(|k| *k != "id" && *k != "model") {
        return Err(format!("unknown field {:?}", truncate(key)));
    }
    let id = object
        .get("id")
        .and_then(|v| v.as_str())
        .ok_or("id: expected the job's id, a string")?;
    let model = match object.get("model") {
        None => None,
        Some(v) => Some(v.as_str().ok_or("model: expected a string")?.to_string()),
    };
    Ok((id.to_string(), model))
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_reaches_the_jobs_of_its_id_and_model_until_they_end() {
        let board = Arc::new(CancelBoard::default());
        let llm: Arc<str> = Arc::from("llm");
        let other: Arc<str> = Arc::from("other");
        let (a, b, c) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let _a = board.register("g-1", &llm, a.clone());
        let b_guard = board.register("g-1", &other, b.clone());
        let _c = board.register("g-2", &llm, c.clone());
        assert_eq!(board.cancel("g-1", Some("llm")), 1);
        assert!(a.is_cancelled() && !b.is_cancelled() && !c.is_cancelled());
        drop(b_guard);
        assert_eq!(board.cancel("g-1", None), 1);
        assert!(!b.is_cancelled());
        assert_eq!(board.cancel("nobody", None), 0);
    }

    #[test]
    fn a_bad_cancel_message_names_its_field() {
        assert_eq!(
            parse_cancel(br#"{"id": "g-1"}"#).unwrap(),
            ("g-1".into(), None)
        );
        assert_eq!(
            parse_cancel(br#"{"id": 3}"#).unwrap_err(),
            "id: expected the job's id, a string"
        );
        assert_eq!(
            parse_cancel(br#"{"id": "a", "mdl": "x"}"#).unwrap_err(),
            "unknown field \"mdl\""
        );
        assert!(parse_cancel(b"[1]").unwrap_err().starts_with("body"));
        let huge = format!(r#"{{"id": "{}"}}"#, "x".repeat(1 << 20));
        assert!(parse_cancel(huge.as_bytes())
            .unwrap_err()
            .starts_with("body: 1048"));
    }
}
