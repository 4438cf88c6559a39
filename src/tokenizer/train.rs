//! Training the bundled `encoder`'s WordPiece tokenizer (`make-models`): BERT's normalisation
//! (lower case) and pre-tokenisation, `[PAD]` `[UNK]` `[CLS]` `[SEP]` as ids 0 to 3,
//! `[CLS] $A [SEP]` added around each text, and truncation to `max_length` tokens.
//!
//! Deterministic: the same lines give the same `tokenizer.json`, byte for byte (checked by
//! `tests/models_reproducible.rs`). The crate's own `Tokenizer::train` is not: it counts words
//! into a hash map with a random seed, its trainer numbers the `##` continuations in that map's
//! order, and ties between merges are broken by those numbers, so two runs learn different
//! vocabularies. Here the words are counted first (with the same normaliser and
//! pre-tokeniser) and handed to the crate's trainer (`BpeTrainer::do_train` with the `##`
//! prefix, as its WordPiece trainer does) in a map with fixed seeds, filled in sorted order.
//! The order still depends on `ahash`'s hash function, which is fixed for a given build target
//! (it differs where `ahash` uses AES instructions, e.g. with `-C target-cpu=native`).

use std::collections::BTreeMap;

use ahash::{AHashMap, RandomState};
use compact_str::CompactString;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::bpe::{BpeTrainer, BPE};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, NormalizedString, Normalizer, OffsetReferential, OffsetType, PreTokenizedString,
    PreTokenizer, Tokenizer, TruncationParams,
};

/// The special tokens, in id order.
pub const SPECIAL_TOKENS: [&str; 4] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"];

/// What to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WordPieceSpec {
    /// Most tokens in the vocabulary, special tokens included.
    pub vocab_size: usize,
    /// Fewest occurrences of a pair for it to be merged into a token.
    pub min_frequency: u64,
    /// Tokens per encoded text at most, special tokens included.
    pub max_length: usize,
}

/// A trained tokenizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trained {
    /// The `tokenizer.json` text.
    pub json: String,
    /// Tokens in the vocabulary, special tokens included.
    pub vocab_size: usize,
    /// The id of `[UNK]`.
    pub unk_id: u32,
}

/// Why training failed.
#[derive(Debug, thiserror::Error)]
#[error("training the tokenizer: {0}")]
pub struct TrainError(String);

fn err(e: impl std::fmt::Display) -> TrainError {
    TrainError(e.to_string())
}

/// Each normalised, pre-tokenised word of `lines` and how often it occurs, in the map the
/// trainer takes: fixed seeds, filled in sorted order.
fn word_counts(lines: &[&str]) -> Result<AHashMap<CompactString, u64>, TrainError> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for line in lines {
        let mut normalized = NormalizedString::from(*line);
        BertNormalizer::default()
            .normalize(&mut normalized)
            .map_err(err)?;
        let mut words = PreTokenizedString::from(normalized);
        BertPreTokenizer.pre_tokenize(&mut words).map_err(err)?;
        for (word, _, _) in words.get_splits(OffsetReferential::Original, OffsetType::Byte) {
            *counts.entry(word.to_owned()).or_default() += 1;
        }
    }
    let mut map = AHashMap::with_hasher(RandomState::with_seeds(1, 2, 3, 4));
    for (word, count) in counts {
        map.insert(CompactString::from(word), count);
    }
    Ok(map)
}

/// Trains a WordPiece tokenizer on `lines`.
pub fn wordpiece(lines: &[&str], spec: WordPieceSpec) -> Result<Trained, TrainError> {
    let specials: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    let trainer = BpeTrainer::builder()
        .continuing_subword_prefix("##".to_string())
        .vocab_size(spec.vocab_size)
        .min_frequency(spec.min_frequency)
        .special_tokens(specials)
        .show_progress(false)
        .build();
    let mut bpe = BPE::default();
    let specials = trainer
        .do_train(&word_counts(lines)?, &mut bpe)
        .map_err(err)?;
    let mut tokenizer = Tokenizer::new(WordPiece::from_bpe(&bpe));
    tokenizer
        .with_normalizer(Some(BertNormalizer::default()))
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_decoder(Some(WordPieceDecoder::default()));
    tokenizer.add_special_tokens(&specials);
    let id = |tokenizer: &Tokenizer, token: &str| {
        tokenizer
            .token_to_id(token)
            .ok_or_else(|| TrainError(format!("{token} missing from the vocabulary")))
    };
    let cls = id(&tokenizer, "[CLS]")?;
    let sep = id(&tokenizer, "[SEP]")?;
    let template = TemplateProcessing::builder()
        .try_single("[CLS] $A [SEP]")
        .map_err(err)?
        .try_pair("[CLS] $A [SEP] $B:1 [SEP]:1")
        .map_err(err)?
        .special_tokens(vec![("[CLS]", cls), ("[SEP]", sep)])
        .build()
        .map_err(err)?;
    tokenizer.with_post_processor(Some(template));
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: spec.max_length,
            ..Default::default()
        }))
        .map_err(err)?;
    Ok(Trained {
        json: tokenizer.to_string(true).map_err(err)?,
        vocab_size: tokenizer.get_vocab_size(true),
        unk_id: id(&tokenizer, SPECIAL_TOKENS[1])?,
    })
}
