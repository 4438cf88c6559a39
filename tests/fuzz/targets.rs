//! The fuzz targets: each takes the mutator's bytes and calls a decoder the way the worker
//! does (decode, then validate against the model, then cut and join rows as the batcher does),
//! and says whether the input was accepted (the run reports the share, to show the mutations
//! reach past the parser).

use std::time::SystemTime;

use infermq::broker::headers::JobHeaders;
use infermq::protocol::{
    decode_request, validate_request, InferenceRequest, ModelSignature, Tensor,
};
use lapin::types::{AMQPValue, DecimalValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::BasicProperties;

use crate::mutator::Reader;

/// The one call of the delivery-envelope reader (renamed here when the reader is renamed).
pub fn read_envelope(properties: &BasicProperties) -> bool {
    match JobHeaders::read(properties) {
        Ok(envelope) => {
            let _ = envelope.expired(SystemTime::now());
            true
        }
        Err(_) => false,
    }
}

/// A JSON body.
pub fn decode_json(bytes: &[u8], signatures: &[ModelSignature]) -> bool {
    match decode_request(bytes, None) {
        Ok(request) => validate_all(&request, signatures),
        Err(_) => false,
    }
}

/// A binary body: 8 bytes of header length (little endian), then the body.
pub fn decode_binary(bytes: &[u8], signatures: &[ModelSignature]) -> bool {
    let (len, body) = match bytes.split_first_chunk::<8>() {
        Some((len, body)) => (u64::from_le_bytes(*len), body),
        None => (bytes.len() as u64, bytes),
    };
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    match decode_request(body, Some(len)) {
        Ok(request) => validate_all(&request, signatures),
        Err(_) => false,
    }
}

/// A JSON body for one model: the first byte chooses the signature.
pub fn decode_and_validate(bytes: &[u8], signatures: &[ModelSignature]) -> bool {
    let Some((selector, body)) = bytes.split_first() else {
        return false;
    };
    let signature = &signatures[*selector as usize % signatures.len()];
    let Ok(request) = decode_request(body, None) else {
        return false;
    };
    let valid = validate_request(&request, signature).is_ok();
    if valid {
        batch_like_the_worker(&request, signature);
    }
    valid
}

/// A training job body.
pub fn training_job(bytes: &[u8]) -> bool {
    infermq::training::parse_job(bytes).is_ok()
}

/// Properties and headers built from the bytes.
pub fn envelope(bytes: &[u8]) -> bool {
    let mut r = Reader::new(bytes);
    let flags = r.u8();
    let mut properties = BasicProperties::default();
    if flags & 1 != 0 {
        properties = properties.with_timestamp(edge_u64(&mut r));
    }
    if flags & 2 != 0 {
        properties = properties.with_expiration(short_string(&mut r));
    }
    if flags & 4 != 0 {
        properties = properties.with_headers(table(&mut r, 0));
    }
    read_envelope(&properties)
}

/// Validates against every signature; true when the request decoded (the caller's question).
fn validate_all(request: &InferenceRequest, signatures: &[ModelSignature]) -> bool {
    for signature in signatures {
        if validate_request(request, signature).is_ok() {
            batch_like_the_worker(request, signature);
        }
    }
    true
}

/// What the batcher does with a valid job's batched inputs: join two jobs, cut one row.
fn batch_like_the_worker(request: &InferenceRequest, signature: &ModelSignature) {
    for input in &request.inputs {
        let batched = signature
            .inputs
            .iter()
            .any(|s| s.name == input.name && s.is_batched());
        if !batched || input.element_count() > 1 << 16 {
            continue;
        }
        let joined = Tensor::concat_rows(&[input, input]);
        let rows = input.rows();
        let _ = input.slice_rows(0, rows.min(1));
        if let Ok(joined) = joined {
            let _ = joined.slice_rows(rows, joined.rows());
        }
    }
}

const KEYS: &[&str] = &[
    "x-model-version",
    "X-Model-Version",
    "x-deadline-ms",
    "X-DEADLINE-MS",
    "inference-header-content-length",
    "Inference-Header-Content-Length",
    "x-delivery-count",
    "x-death",
    "x-other",
];

const STRINGS: &[&str] = &[
    "",
    "0",
    "1",
    "-1",
    " 7 ",
    "60000",
    "abc",
    "1.5",
    "1e3",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775807",
    "-9223372036854775808",
    "340282366920938463463374607431768211455",
    "340282366920938463463374607431768211456",
    "\u{0}",
    "é",
];

fn edge_u64(r: &mut Reader) -> u64 {
    match r.u8() % 8 {
        0 => 0,
        1 => u64::MAX,
        2 => u64::MAX / 1000,
        3 => i64::MAX as u64,
        4 => 1 << 32,
        5 => 1_800_000_000,
        6 => 1_800_000_000_000,
        _ => r.u64(),
    }
}

fn text(r: &mut Reader) -> String {
    match r.u8() % 3 {
        0 => String::from_utf8_lossy(r.bytes(255)).into_owned(),
        _ => STRINGS[r.u8() as usize % STRINGS.len()].to_string(),
    }
}

/// A short string is at most 255 bytes (lapin panics on longer ones: a harness limit).
fn short_string(r: &mut Reader) -> ShortString {
    let mut text = text(r);
    while text.len() > 255 {
        text.pop();
    }
    ShortString::from(text)
}

fn table(r: &mut Reader, depth: usize) -> FieldTable {
    let mut table = FieldTable::default();
    for _ in 0..r.u8() % 8 {
        let key = match r.u8() % 4 {
            0 => short_string(r),
            _ => ShortString::from(KEYS[r.u8() as usize % KEYS.len()]),
        };
        table.insert(key, value(r, depth));
    }
    table
}

fn value(r: &mut Reader, depth: usize) -> AMQPValue {
    let edge = edge_u64(r);
    match r.u8() % 18 {
        0 => AMQPValue::Boolean(edge & 1 == 1),
        1 => AMQPValue::ShortShortInt(edge as i8),
        2 => AMQPValue::ShortShortUInt(edge as u8),
        3 => AMQPValue::ShortInt(edge as i16),
        4 => AMQPValue::ShortUInt(edge as u16),
        5 => AMQPValue::LongInt(edge as i32),
        6 => AMQPValue::LongUInt(edge as u32),
        7 => AMQPValue::LongLongInt(edge as i64),
        8 => AMQPValue::Float(f32::from_bits(edge as u32)),
        9 => AMQPValue::Double(f64::from_bits(edge)),
        10 => AMQPValue::DecimalValue(DecimalValue {
            scale: edge as u8,
            value: (edge >> 8) as u32,
        }),
        11 => AMQPValue::ShortString(short_string(r)),
        12 | 13 => AMQPValue::LongString(LongString::from(text(r))),
        14 if depth < 4 => {
            let items: Vec<AMQPValue> = (0..r.u8() % 4).map(|_| value(r, depth + 1)).collect();
            AMQPValue::FieldArray(FieldArray::from(items))
        }
        15 => AMQPValue::Timestamp(edge),
        16 if depth < 4 => AMQPValue::FieldTable(table(r, depth + 1)),
        _ => AMQPValue::Void,
    }
}
