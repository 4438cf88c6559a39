//! What the generation engine knows of a decoder: where rows sit in its caches, the names of
//! its inputs and outputs, its sizes and token ids, and the engine's budgets. Found in a
//! version's files by `serving::decoder`.

use std::time::Duration;

use crate::protocol::DataType;
use crate::repository::config::GenerateConfig;

/// Where rows of different lengths sit in a batch's caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheLayout {
    /// At the end, left-padded, with mask 0 on the padding and their own `position_ids`.
    LeftPadded,
    /// At the start, right-padded: a row's mask sum is its length, where its next token is
    /// written and its position (GroupQueryAttention).
    RowLengths,
}

/// Budgets of a version's generation engine (`[generate]`, with defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenerateBudgets {
    pub max_active_rows: usize,
    pub max_prefill_tokens: usize,
    pub max_waiting_jobs: usize,
    /// `max_tokens` of a job that sets none (cut to what its context leaves).
    pub max_tokens: usize,
    /// The least time between two messages of a streamed job (its first piece goes at once).
    pub stream_interval: Duration,
}

impl GenerateBudgets {
    /// 32 rows, 512 prompt tokens per step, 32 waiting jobs, 128 tokens, streamed pieces sent
    /// as soon as confirms allow, by default.
    pub fn from_config(config: Option<&GenerateConfig>) -> Result<GenerateBudgets, String> {
        let get = |value: Option<usize>, default: usize, key: &str| match value {
            Some(0) => Err(format!("[generate] {key} must be at least 1")),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        let c = config.cloned().unwrap_or_default();
        let interval = c.stream_interval_ms.unwrap_or(0);
        if interval > 60_000 {
            return Err(format!(
                "[generate] stream_interval_ms must be at most 60000 (a minute), not {interval}"
            ));
        }
        Ok(GenerateBudgets {
            max_active_rows: get(c.max_active_rows, 32, "max_active_rows")?,
            max_prefill_tokens: get(c.max_prefill_tokens, 512, "max_prefill_tokens")?,
            max_waiting_jobs: get(c.max_waiting_jobs, 32, "max_waiting_jobs")?,
            max_tokens: get(c.max_tokens, 128, "max_tokens")?,
            stream_interval: Duration::from_millis(interval),
        })
    }
}

/// What the generation engine needs to know of a decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderSpec {
    pub layout: CacheLayout,
    /// Where it was found: `genai_config.json` or `past_key_values`.
    pub found_by: &'static str,
    pub input_ids: String,
    pub attention_mask: String,
    pub position_ids: Option<String>,
    /// Per layer: (past key, past value, present key, present value).
    pub caches: Vec<[String; 4]>,
    pub logits: String,
    pub kv_heads: usize,
    pub head_size: usize,
    /// FP32 or FP16, the same for every cache.
    pub kv_type: DataType,
    pub logits_type: DataType,
    pub context_length: usize,
    pub eos_token_ids: Vec<u32>,
    pub budgets: GenerateBudgets,
}

impl DecoderSpec {
    /// Bytes one token takes in the caches of every layer.
    pub fn kv_bytes_per_token(&self) -> u64 {
        let elem = element_size(self.kv_type) as u64;
        self.caches.len() as u64 * 2 * self.kv_heads as u64 * self.head_size as u64 * elem
    }

    /// What metadata, `/v2/models` and `infermq models` say of the generation: where it was
    /// found, its sizes, context, layout, budgets and defaults.
    pub fn describe(&self) -> serde_json::Value {
        let b = self.budgets;
        let layout = match self.layout {
            CacheLayout::LeftPadded => "left_padded",
            CacheLayout::RowLengths => "row_lengths",
        };
        serde_json::json!({
            "context_length": self.context_length,
            "found_by": self.found_by,
            "cache_layout": layout,
            "layers": self.caches.len(),
            "kv_heads": self.kv_heads,
            "head_size": self.head_size,
            "eos_token_ids": self.eos_token_ids,
            "kv_cache_bytes_per_token": self.kv_bytes_per_token(),
            "kv_cache_bytes_admitted": self.kv_bytes_admitted(),
            "max_active_rows": b.max_active_rows,
            "max_prefill_tokens": b.max_prefill_tokens,
            "max_waiting_jobs": b.max_waiting_jobs,
            "stream_interval_ms": b.stream_interval.as_millis() as u64,
            "defaults": {"max_tokens": b.max_tokens, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "stream": false},
        })
    }

    /// The caches of every row at full context: what memory admission counts beside the
    /// weights.
    pub fn kv_bytes_admitted(&self) -> u64 {
        self.kv_bytes_per_token()
            .saturating_mul(self.context_length as u64)
            .saturating_mul(self.budgets.max_active_rows as u64)
    }
}

pub fn element_size(datatype: DataType) -> usize {
    match datatype {
        DataType::F16 => 2,
        _ => 4,
    }
}
