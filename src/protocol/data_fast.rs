//! Fast path for numeric and BOOL `data`: a byte scanner over the raw JSON text (already
//! validated by serde_json when it captured the `RawValue`) that parses numbers straight
//! into the packed buffer with the standard library's correctly rounded parsers.
//!
//! It accepts only what is certainly valid for the datatype; on anything else (an error,
//! an escaped string, `null`) it gives up and `data.rs` re-parses with the serde visitor,
//! which produces the precise error message. Parsing FP32 text directly as `f32` (not via
//! `f64`) also avoids double rounding.

use super::types::DataType;
use half::f16;

/// Parses `raw` for a fixed-size `datatype`; `None` means "use the slow path".
/// Returns the packed bytes and the element count.
pub(crate) fn parse_fixed(
    raw: &str,
    datatype: DataType,
    capacity: usize,
) -> Option<(Vec<u8>, usize)> {
    let size = datatype.element_size()?;
    let cap = capacity.min(raw.len()).saturating_mul(size);
    // One monomorphised scan per datatype: no per-element dispatch on the datatype.
    match datatype {
        DataType::Bool => scan(raw, cap, |t, out| {
            out.push(match t {
                "true" => 1,
                "false" => 0,
                _ => return None,
            });
            Some(())
        }),
        DataType::F32 => scan(raw, cap, |t, out| {
            out.extend(float::<f32>(t)?.to_le_bytes());
            Some(())
        }),
        DataType::F64 => scan(raw, cap, |t, out| {
            out.extend(float::<f64>(t)?.to_le_bytes());
            Some(())
        }),
        DataType::F16 => scan(raw, cap, |t, out| {
            let v = float::<f64>(t)?;
            let h = f16::from_f64(v);
            if v.is_finite() && !h.is_finite() {
                return None;
            }
            out.extend(h.to_le_bytes());
            Some(())
        }),
        DataType::U8 => scan(raw, cap, |t, out| {
            out.push(int::<u8>(t)?);
            Some(())
        }),
        DataType::I8 => scan(raw, cap, |t, out| {
            out.push(int::<i8>(t)? as u8);
            Some(())
        }),
        DataType::U16 => scan(raw, cap, |t, out| {
            out.extend(int::<u16>(t)?.to_le_bytes());
            Some(())
        }),
        DataType::I16 => scan(raw, cap, |t, out| {
            out.extend(int::<i16>(t)?.to_le_bytes());
            Some(())
        }),
        DataType::U32 => scan(raw, cap, |t, out| {
            out.extend(int::<u32>(t)?.to_le_bytes());
            Some(())
        }),
        DataType::I32 => scan(raw, cap, |t, out| {
            out.extend(int::<i32>(t)?.to_le_bytes());
            Some(())
        }),
        DataType::U64 => scan(raw, cap, |t, out| {
            out.extend(int::<u64>(t)?.to_le_bytes());
            Some(())
        }),
        DataType::I64 => scan(raw, cap, |t, out| {
            out.extend(int::<i64>(t)?.to_le_bytes());
            Some(())
        }),
        DataType::Bytes => None,
    }
}

/// Walks the (valid JSON) text, checking the nesting is rectangular, and hands each
/// scalar token to `push`.
fn scan<F>(raw: &str, cap: usize, mut push: F) -> Option<(Vec<u8>, usize)>
where
    F: FnMut(&str, &mut Vec<u8>) -> Option<()>,
{
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(cap);
    // Elements counted so far in each open array, outermost first.
    let mut open: Vec<usize> = Vec::new();
    // Length of the first array closed at each depth.
    let mut dims: Vec<Option<usize>> = Vec::new();
    let mut leaf_depth: Option<usize> = None;
    let mut count = 0usize;
    let mut i = 0usize;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'\n' | b'\r' | b',' => i += 1,
            b'[' => {
                let depth = open.len();
                if leaf_depth.is_some_and(|d| d <= depth) {
                    return None;
                }
                open.push(0);
                if dims.len() <= depth {
                    dims.resize(depth + 1, None);
                }
                i += 1;
            }
            b']' => {
                let len = open.pop()?;
                let depth = open.len();
                match dims[depth] {
                    Some(first) if first != len => return None,
                    _ => dims[depth] = Some(len),
                }
                if let Some(parent) = open.last_mut() {
                    *parent += 1;
                }
                i += 1;
            }
            _ => {
                // A scalar: only inside an array, at the one leaf depth, below no array.
                let depth = open.len();
                if depth == 0 || dims.len() > depth || leaf_depth.is_some_and(|d| d != depth) {
                    return None;
                }
                leaf_depth = Some(depth);
                let end = token_end(b, i)?;
                push(&raw[i..end], &mut out)?;
                if let Some(n) = open.last_mut() {
                    *n += 1;
                }
                count += 1;
                i = end;
            }
        }
    }
    (open.is_empty() && !dims.is_empty()).then_some((out, count))
}

/// End of the scalar token starting at `i`: a number, `true`/`false`, or a string without
/// escapes (for `"NaN"` and friends).
fn token_end(b: &[u8], i: usize) -> Option<usize> {
    if b[i] == b'"' {
        let close = b[i + 1..].iter().position(|&c| c == b'"' || c == b'\\')?;
        return (b[i + 1 + close] == b'"').then_some(i + close + 2);
    }
    let len = b[i..]
        .iter()
        .position(|c| matches!(c, b',' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
        .unwrap_or(b.len() - i);
    Some(i + len)
}

trait Float: std::str::FromStr + Copy {
    const NAN: Self;
    const INFINITY: Self;
    const NEG_INFINITY: Self;
    fn is_finite(self) -> bool;
}

impl Float for f32 {
    const NAN: Self = f32::NAN;
    const INFINITY: Self = f32::INFINITY;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    fn is_finite(self) -> bool {
        f32::is_finite(self)
    }
}

impl Float for f64 {
    const NAN: Self = f64::NAN;
    const INFINITY: Self = f64::INFINITY;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    fn is_finite(self) -> bool {
        f64::is_finite(self)
    }
}

/// A JSON number (finite, in range) or one of the non-finite strings.
fn float<T: Float>(tok: &str) -> Option<T> {
    match tok.as_bytes().first()? {
        // The text is a valid JSON number, so an infinite result means overflow.
        b'-' | b'0'..=b'9' => tok.parse::<T>().ok().filter(|v| v.is_finite()),
        b'"' => match tok {
            "\"NaN\"" => Some(T::NAN),
            "\"Infinity\"" => Some(T::INFINITY),
            "\"-Infinity\"" => Some(T::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

/// A JSON integer literal (no fraction or exponent) in range.
fn int<T: std::str::FromStr>(tok: &str) -> Option<T> {
    if tok.bytes().any(|c| matches!(c, b'.' | b'e' | b'E' | b'"')) {
        return None;
    }
    tok.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::super::data::parse_with_serde;
    use super::super::data_write::write_json_data;
    use super::super::tensor::TensorData;
    use super::*;
    use proptest::prelude::*;

    fn slow(raw: &str, datatype: DataType) -> Option<(Vec<u8>, usize)> {
        match parse_with_serde(raw, "x", datatype, 0).ok()? {
            (TensorData::Fixed(b), n) => Some((b, n)),
            (TensorData::Bytes(_), _) => None,
        }
    }

    #[test]
    fn agrees_with_serde_on_hand_written_text() {
        let cases = [
            (DataType::F32, " [ 1 , -2.5e3 ,\n 1E+2, -0 ] "),
            (DataType::F64, "[[1, 2], [3, 4]]"),
            (
                DataType::F16,
                r#"[["NaN", "Infinity"], ["-Infinity", 65504]]"#,
            ),
            (DataType::I64, "[-9223372036854775808, 9223372036854775807]"),
            (DataType::U64, "[18446744073709551615, 0]"),
            (DataType::Bool, "[[[true]], [[false]]]"),
            (DataType::I8, "[]"),
            (DataType::U8, "[[], []]"),
        ];
        for (datatype, raw) in cases {
            let fast = parse_fixed(raw, datatype, 0);
            assert!(fast.is_some(), "{datatype} {raw}");
            assert_eq!(fast, slow(raw, datatype), "{datatype} {raw}");
        }
    }

    #[test]
    fn declines_what_it_cannot_accept() {
        let cases = [
            (DataType::F32, "3"),
            (DataType::F32, "[1, null]"),
            (DataType::F32, r#"["N\u0061N"]"#),
            (DataType::F32, "[1e39]"),
            (DataType::F32, "[[1], 2]"),
            (DataType::F32, "[1, [2]]"),
            (DataType::F32, "[[1, 2], [3]]"),
            (DataType::F32, "[[], [3]]"),
            (DataType::I32, "[1.0]"),
            (DataType::I32, "[1e2]"),
            (DataType::U8, "[-1]"),
            (DataType::U8, "[256]"),
            (DataType::Bool, "[1]"),
            (DataType::I64, "[true]"),
            (DataType::F64, r#"[{"a": [1, 2]}]"#),
            (DataType::Bytes, r#"["a"]"#),
        ];
        for (datatype, raw) in cases {
            assert_eq!(parse_fixed(raw, datatype, 0), None, "{datatype} {raw}");
        }
    }

    fn fixed_types() -> impl Strategy<Value = DataType> {
        prop::sample::select(DataType::ALL[..12].to_vec())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// What the encoder writes, flat or nested in rows, both paths read the same.
        #[test]
        fn fast_and_serde_paths_agree(
            datatype in fixed_types(),
            rows in 1usize..4,
            cols in 0usize..5,
            seed in prop::collection::vec(any::<u8>(), 0..256),
            nested in any::<bool>(),
        ) {
            let size = datatype.element_size().unwrap();
            let n = rows * cols;
            let mut bytes: Vec<u8> = seed.iter().cycle().take(n * size).copied().collect();
            if bytes.len() < n * size {
                bytes.resize(n * size, 0);
            }
            if datatype == DataType::Bool {
                bytes.iter_mut().for_each(|b| *b &= 1);
            }
            let row_text = |r: usize| {
                let mut t = Vec::new();
                let chunk = bytes[r * cols * size..(r + 1) * cols * size].to_vec();
                write_json_data(&mut t, datatype, &TensorData::Fixed(chunk));
                String::from_utf8(t).unwrap()
            };
            let raw = if nested {
                format!("[{}]", (0..rows).map(row_text).collect::<Vec<_>>().join(","))
            } else {
                let mut t = Vec::new();
                write_json_data(&mut t, datatype, &TensorData::Fixed(bytes.clone()));
                String::from_utf8(t).unwrap()
            };
            let fast = parse_fixed(&raw, datatype, n);
            prop_assert!(fast.is_some(), "{}", raw);
            let (packed, count) = fast.clone().unwrap();
            prop_assert_eq!(count, n);
            // NaN payloads are canonicalised by JSON; compare re-encoded text instead.
            let mut again = Vec::new();
            write_json_data(&mut again, datatype, &TensorData::Fixed(packed));
            let mut orig = Vec::new();
            write_json_data(&mut orig, datatype, &TensorData::Fixed(bytes));
            prop_assert_eq!(again, orig);
            prop_assert_eq!(fast, slow(&raw, datatype));
        }
    }
}
