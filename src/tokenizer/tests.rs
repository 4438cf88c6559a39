use super::*;
use proptest::prelude::*;

/// The bundled encoder's tokenizer.
fn shipped_json() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/encoder/1/tokenizer.json");
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn shipped(limits: TextLimits) -> Tokenizer {
    Tokenizer::from_bytes(&shipped_json(), 128, limits).expect("the bundled tokenizer loads")
}

fn texts(items: &[&[u8]]) -> Tensor {
    Tensor::from_bytes(
        "text",
        vec![items.len()],
        items.iter().map(|s| s.to_vec()).collect(),
    )
}

const CLS: i64 = 2;
const SEP: i64 = 3;
const UNK: i64 = 1;

#[test]
fn a_sentence_becomes_its_tokens_between_cls_and_sep() {
    let t = shipped(TextLimits::default());
    let tokens = t
        .encode(
            &texts(&[b"In the beginning God created the heaven and the earth."]),
            "inputs[0]",
            false,
        )
        .unwrap();
    assert_eq!(tokens.rows, 1);
    let ids = &tokens.input_ids;
    assert_eq!(ids.len(), tokens.length);
    assert_eq!((ids[0], ids[ids.len() - 1]), (CLS, SEP));
    assert!(
        !ids.contains(&UNK),
        "every word of the corpus is known: {ids:?}"
    );
    // 10 words and the full stop, lower-cased, each a token of its own.
    assert_eq!(tokens.length, 13, "{ids:?}");
    assert!(tokens.attention_mask.iter().all(|&m| m == 1));
    assert_eq!(tokens.token_type_ids, None);
    let again = t
        .encode(
            &texts(&[b"in THE beginning god created the heaven and the earth ."]),
            "inputs[0]",
            true,
        )
        .unwrap();
    assert_eq!(&again.input_ids, ids, "BERT normalisation: lower case");
    assert_eq!(again.token_type_ids, Some(vec![0; 13]));
}

#[test]
fn rows_are_padded_to_the_longest_of_the_job() {
    let t = shipped(TextLimits::default());
    let tokens = t
        .encode(
            &texts(&[b"Abram", b"And God said, Let there be light", b""]),
            "inputs[0]",
            true,
        )
        .unwrap();
    assert_eq!((tokens.rows, tokens.length), (3, 10));
    let row = |v: &[i64], r: usize| v[r * 10..(r + 1) * 10].to_vec();
    assert_eq!(row(&tokens.attention_mask, 0)[..4], [1, 1, 1, 0]);
    assert_eq!(row(&tokens.input_ids, 0)[3..], [0; 7], "[PAD] is id 0");
    assert_eq!(row(&tokens.attention_mask, 1), vec![1; 10]);
    assert_eq!(
        row(&tokens.input_ids, 2)[..3],
        [CLS, SEP, 0],
        "empty text: [CLS] [SEP]"
    );
    let tensor = tokens.tensor("input_ids", &tokens.input_ids);
    assert_eq!(
        (tensor.datatype, tensor.shape.clone()),
        (DataType::I64, vec![3, 10])
    );
}

#[test]
fn long_text_is_cut_to_the_maximum_length() {
    let t = shipped(TextLimits::default());
    let long = "and the earth ".repeat(300);
    let tokens = t
        .encode(&texts(&[long.as_bytes()]), "inputs[0]", false)
        .unwrap();
    assert_eq!(tokens.length, 128);
    assert_eq!(
        tokens.input_ids[127], SEP,
        "special tokens count in the 128"
    );
    let short = Tokenizer::from_bytes(&shipped_json(), 16, TextLimits::default()).unwrap();
    assert_eq!(
        short.max_length(),
        16,
        "the model's maximum, below the file's 128"
    );
    let tokens = short
        .encode(&texts(&[long.as_bytes()]), "inputs[0]", false)
        .unwrap();
    assert_eq!(tokens.length, 16);
    assert!(
        t.vocab_size() > 1000 && t.vocab_size() <= 2048,
        "{}",
        t.vocab_size()
    );
}

#[test]
fn text_outside_the_limits_is_refused_naming_the_element() {
    let limits = TextLimits {
        max_texts: 3,
        max_text_bytes: 10,
        max_job_bytes: 25,
    };
    let t = shipped(limits);
    let cases: [(Tensor, &str, ErrorCode); 6] = [
        (
            texts(&[b"a", b"b", b"c", b"d"]),
            "inputs[2].shape[0]: expected at most 3 strings a job, got 4",
            ErrorCode::TooLarge,
        ),
        (
            texts(&[b"a", b"01234567890"]),
            "inputs[2].data[1]: expected at most 10 bytes of text, got 11",
            ErrorCode::TooLarge,
        ),
        (
            texts(&[b"0123456789", b"0123456789", b"0123456"]),
            "inputs[2].data: expected at most 25 bytes of text a job, got 27",
            ErrorCode::TooLarge,
        ),
        (
            texts(&[b"ok", b"ab\xffcd"]),
            "inputs[2].data[1]: expected UTF-8 text, got an invalid byte at offset 2",
            ErrorCode::InvalidRequest,
        ),
        (
            Tensor::from_f32("text", vec![1], &[1.0]),
            "inputs[2]: expected a BYTES tensor of shape [n] (one string a row), got FP32 [1]",
            ErrorCode::InvalidRequest,
        ),
        (
            Tensor::from_bytes("text", vec![1, 1], vec![b"a".to_vec()]),
            "got BYTES [1, 1]",
            ErrorCode::InvalidRequest,
        ),
    ];
    for (tensor, want, code) in cases {
        let err = t.encode(&tensor, "inputs[2]", false).unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
        assert_eq!(err.code(), code, "{err}");
    }
}

#[test]
fn unusable_files_are_refused() {
    let garbage = Tokenizer::from_bytes(b"{not json", 128, TextLimits::default());
    assert!(
        matches!(garbage, Err(TokenizerError::Parse(_))),
        "{garbage:?}"
    );
    let zero = Tokenizer::from_bytes(&shipped_json(), 0, TextLimits::default());
    assert!(matches!(zero, Err(TokenizerError::MaxLength)));
    let json = String::from_utf8(shipped_json())
        .unwrap()
        .replace("[PAD]", "[NOPE]");
    let nopad = Tokenizer::from_bytes(json.as_bytes(), 128, TextLimits::default());
    assert!(
        matches!(nopad, Err(TokenizerError::NoPadToken)),
        "{nopad:?}"
    );
    let missing = Tokenizer::from_file(
        Path::new("/nonexistent/tokenizer.json"),
        8,
        TextLimits::default(),
    );
    assert!(matches!(missing, Err(TokenizerError::Read { .. })));
}

/// Strings of arbitrary bytes, mostly UTF-8 (often multi-byte and unusual characters).
fn strings() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(
        prop_oneof![
            any::<String>().prop_map(String::into_bytes),
            "[ -~]{0,80}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..40),
        ],
        1..6,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn arbitrary_bytes_give_tokens_or_an_error_never_a_panic(items in strings(), type_ids in any::<bool>()) {
        let t = shipped(TextLimits { max_texts: 4, max_text_bytes: 60, max_job_bytes: 150 });
        let tensor = Tensor::from_bytes("text", vec![items.len()], items.clone());
        let total: usize = items.iter().map(Vec::len).sum();
        let first_bad = items.iter().position(|s| std::str::from_utf8(s).is_err());
        match t.encode(&tensor, "inputs[0]", type_ids) {
            Ok(tokens) => {
                prop_assert!(items.len() <= 4 && total <= 150 && first_bad.is_none());
                prop_assert!(items.iter().all(|s| s.len() <= 60));
                prop_assert_eq!(tokens.rows, items.len());
                prop_assert!(tokens.length >= 1 && tokens.length <= 128);
                let cells = tokens.rows * tokens.length;
                prop_assert_eq!(tokens.input_ids.len(), cells);
                prop_assert_eq!(tokens.token_type_ids.as_ref().map(Vec::len), type_ids.then_some(cells));
                let vocab = t.vocab_size() as i64;
                prop_assert!(tokens.input_ids.iter().all(|&id| (0..vocab).contains(&id)));
                for row in tokens.attention_mask.chunks(tokens.length) {
                    let kept = row.iter().take_while(|&&m| m == 1).count();
                    prop_assert!(kept >= 2, "[CLS] and [SEP] at least");
                    prop_assert!(row[kept..].iter().all(|&m| m == 0));
                }
            }
            Err(TextError::InvalidUtf8 { index, .. }) => {
                prop_assert_eq!(Some(index), first_bad);
            }
            Err(e) => {
                prop_assert_eq!(e.code(), ErrorCode::TooLarge, "{}", e);
                prop_assert!(items.len() > 4 || total > 150 || items.iter().any(|s| s.len() > 60));
            }
        }
    }
}

use crate::protocol::ErrorCode;
