//! Fast path for numeric and BOOL `data`: a byte scanner over the raw JSON text that parses
//! numbers straight into the packed buffer.
//!
//! It accepts only what is certainly valid JSON and valid for the datatype (commas, brackets
//! and number syntax are checked here, so it can also read a body serde_json has not
//! validated: `request_fast.rs`); on anything else (an error, an escaped string, `null`) it
//! gives up and `data.rs` re-parses with the serde visitor, which produces the precise error
//! message.
//!
//! Floats: one pass finds the end of a number and reads its digits; numbers of up to 19
//! significant digits with a small decimal exponent (what encoders write for real data:
//! `-0.73412955`, `1e-3`) are converted exactly with Clinger's fast path (an exact integer
//! times or divided by an exact power of ten, one correctly rounded IEEE operation). For
//! FP32 that f64 result is narrowed only when it is not an FP32 rounding midpoint, which
//! makes the narrowing equal to rounding the decimal directly (no double rounding);
//! everything else goes to the standard library's correctly rounded parser for the target
//! type. Both paths give the same bits (property-tested against `str::parse`).

use super::types::DataType;
use half::f16;

/// Parses `raw` (one JSON array, with nothing but whitespace around it) for a fixed-size
/// `datatype`; `None` means "use the slow path". Returns the packed bytes and the element count.
pub(crate) fn parse_fixed(
    raw: &str,
    datatype: DataType,
    capacity: usize,
) -> Option<(Vec<u8>, usize)> {
    let (packed, count, end) = parse_fixed_prefix(raw, datatype, capacity)?;
    raw.as_bytes()[end..]
        .iter()
        .all(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
        .then_some((packed, count))
}

/// Parses the JSON array that `raw` starts with (after whitespace) for a fixed-size
/// `datatype`: the packed bytes, the element count and where the array ends. `None` for
/// anything that is not certainly valid.
pub(crate) fn parse_fixed_prefix(
    raw: &str,
    datatype: DataType,
    capacity: usize,
) -> Option<(Vec<u8>, usize, usize)> {
    let size = datatype.element_size()?;
    let cap = capacity.min(raw.len()).saturating_mul(size);
    // One monomorphised scan per datatype: no per-element dispatch on the datatype.
    match datatype {
        DataType::Bool => scan(
            raw,
            cap,
            tokens(|t, out| {
                out.push(match t {
                    "true" => 1,
                    "false" => 0,
                    _ => return None,
                });
                Some(())
            }),
        ),
        DataType::F32 => scan(raw, cap, |raw, i, out| {
            let (v, end) = float_at::<f32>(raw, i)?;
            out.extend_from_slice(&v.to_le_bytes());
            Some(end)
        }),
        DataType::F64 => scan(raw, cap, |raw, i, out| {
            let (v, end) = float_at::<f64>(raw, i)?;
            out.extend_from_slice(&v.to_le_bytes());
            Some(end)
        }),
        DataType::F16 => scan(raw, cap, |raw, i, out| {
            let (v, end) = float_at::<f64>(raw, i)?;
            let h = f16::from_f64(v);
            if v.is_finite() && !h.is_finite() {
                return None;
            }
            out.extend_from_slice(&h.to_le_bytes());
            Some(end)
        }),
        DataType::U8 => ints(raw, cap, |v: u8| [v]),
        DataType::I8 => ints(raw, cap, i8::to_le_bytes),
        DataType::U16 => ints(raw, cap, u16::to_le_bytes),
        DataType::I16 => ints(raw, cap, i16::to_le_bytes),
        DataType::U32 => ints(raw, cap, u32::to_le_bytes),
        DataType::I32 => ints(raw, cap, i32::to_le_bytes),
        DataType::U64 => ints(raw, cap, u64::to_le_bytes),
        DataType::I64 => ints(raw, cap, i64::to_le_bytes),
        DataType::Bytes => None,
    }
}

/// Arrays nested deeper than this are left to the serde path (serde_json stops at 128 levels of
/// the whole body; a request's `data` starts four levels down).
const MAX_DEPTH: usize = 64;

/// Walks one JSON array from the start of `raw`, checking its syntax (a comma between
/// elements, none before `]`) and that its nesting is rectangular, and hands the start of
/// each scalar to `push`, which appends it to the buffer and returns where it ends. Stops
/// after the array's closing bracket: returns the buffer, the count and that position.
fn scan<F>(raw: &str, cap: usize, mut push: F) -> Option<(Vec<u8>, usize, usize)>
where
    F: FnMut(&str, usize, &mut Vec<u8>) -> Option<usize>,
{
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(cap);
    let mut walk = Walk::default();
    let mut i = 0usize;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b',' => {
                walk.comma()?;
                i += 1;
            }
            b'[' => {
                walk.open()?;
                i += 1;
            }
            b']' => {
                i += 1;
                if walk.close()? {
                    return Some((out, walk.count, i));
                }
            }
            _ => {
                walk.scalar()?;
                i = push(raw, i, &mut out)?;
            }
        }
    }
    // The text ended inside the array (or held none).
    None
}

/// Where [`scan`] is in the array: each step checks that the token may come next and records
/// it; `None` refuses the text. (Inlined into the loop: the scanner is on the hot path, and
/// `cargo bench --bench codec` shows no cost to the split.)
#[derive(Default)]
struct Walk {
    /// Elements counted so far in each open array, outermost first.
    open: Vec<usize>,
    /// Length of the first array closed at each depth.
    dims: Vec<Option<usize>>,
    leaf_depth: Option<usize>,
    /// Scalars so far.
    count: usize,
    /// After `[` or `,` (or at the start) a value must come; after a value, `,` or `]`.
    after_value: bool,
    /// Right after `[`, where `]` may come too.
    just_opened: bool,
}

impl Walk {
    #[inline(always)]
    fn comma(&mut self) -> Option<()> {
        if !self.after_value || self.open.is_empty() {
            return None;
        }
        self.after_value = false;
        self.just_opened = false;
        Some(())
    }

    #[inline(always)]
    fn open(&mut self) -> Option<()> {
        // Deeper nesting goes to serde_json, which refuses it past its recursion limit.
        if self.after_value || self.open.len() >= MAX_DEPTH {
            return None;
        }
        self.just_opened = true;
        let depth = self.open.len();
        if self.leaf_depth.is_some_and(|d| d <= depth) {
            return None;
        }
        self.open.push(0);
        if self.dims.len() <= depth {
            self.dims.resize(depth + 1, None);
        }
        Some(())
    }

    /// `Some(true)` when the outermost array closed.
    #[inline(always)]
    fn close(&mut self) -> Option<bool> {
        if !self.after_value && !self.just_opened {
            return None;
        }
        self.after_value = true;
        self.just_opened = false;
        let len = self.open.pop()?;
        let depth = self.open.len();
        match self.dims[depth] {
            Some(first) if first != len => return None,
            _ => self.dims[depth] = Some(len),
        }
        match self.open.last_mut() {
            Some(parent) => *parent += 1,
            None => return Some(true),
        }
        Some(false)
    }

    /// A scalar: only inside an array, at the one leaf depth, below no array.
    #[inline(always)]
    fn scalar(&mut self) -> Option<()> {
        let depth = self.open.len();
        if self.after_value
            || depth == 0
            || self.dims.len() > depth
            || self.leaf_depth.is_some_and(|d| d != depth)
        {
            return None;
        }
        self.after_value = true;
        self.just_opened = false;
        self.leaf_depth = Some(depth);
        if let Some(n) = self.open.last_mut() {
            *n += 1;
        }
        self.count += 1;
        Some(())
    }
}

/// The scan for one integer datatype, `le` writing a value's little-endian bytes.
fn ints<T: std::str::FromStr, const N: usize>(
    raw: &str,
    cap: usize,
    le: impl Fn(T) -> [u8; N],
) -> Option<(Vec<u8>, usize, usize)> {
    scan(
        raw,
        cap,
        tokens(|t, out| {
            out.extend_from_slice(&le(int::<T>(t)?));
            Some(())
        }),
    )
}

/// Adapts a push of whole tokens (`true`, `-12`) to [`scan`]'s push-from-a-position.
fn tokens<F>(mut push: F) -> impl FnMut(&str, usize, &mut Vec<u8>) -> Option<usize>
where
    F: FnMut(&str, &mut Vec<u8>) -> Option<()>,
{
    move |raw, i, out| {
        let end = token_end(raw.as_bytes(), i)?;
        push(&raw[i..end], out)?;
        Some(end)
    }
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
    /// The correctly rounded value of an exact f64 that is itself the correctly rounded
    /// value of the decimal, or `None` where narrowing it could round differently.
    fn from_exact_f64(v: f64) -> Option<Self>;
}

impl Float for f32 {
    const NAN: Self = f32::NAN;
    const INFINITY: Self = f32::INFINITY;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    fn is_finite(self) -> bool {
        f32::is_finite(self)
    }
    fn from_exact_f64(v: f64) -> Option<Self> {
        // The fast path's values lie within 1e-22..9.1e37 (or are zero): normal f32s, so
        // narrowing drops exactly the 29 low mantissa bits. If the f64 is not an f32
        // midpoint, no midpoint lies between it and the decimal (that midpoint would be a
        // closer f64), so both round to the same f32.
        const HALF: u64 = 1 << 28;
        (v.to_bits() & ((HALF << 1) - 1) != HALF).then_some(v as f32)
    }
}

impl Float for f64 {
    const NAN: Self = f64::NAN;
    const INFINITY: Self = f64::INFINITY;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    fn is_finite(self) -> bool {
        f64::is_finite(self)
    }
    fn from_exact_f64(v: f64) -> Option<Self> {
        Some(v)
    }
}

/// Powers of ten exactly representable as f64.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The float element starting at `i` (a JSON number, finite and in range, or one of the
/// non-finite strings) and where it ends.
fn float_at<T: Float>(raw: &str, i: usize) -> Option<(T, usize)> {
    let b = raw.as_bytes();
    if b[i] == b'"' {
        let end = token_end(b, i)?;
        let v = match &raw[i..end] {
            "\"NaN\"" => T::NAN,
            "\"Infinity\"" => T::INFINITY,
            "\"-Infinity\"" => T::NEG_INFINITY,
            _ => return None,
        };
        return Some((v, end));
    }
    let (digits, end) = number(b, i)?;
    if let Some(v) = digits.and_then(|d| d.exact()).and_then(T::from_exact_f64) {
        return Some((v, end));
    }
    // The text is a valid JSON number, so an infinite result means overflow.
    let v = raw[i..end].parse::<T>().ok().filter(|v| v.is_finite())?;
    Some((v, end))
}

/// A decimal `±mantissa × 10^exponent` read from JSON text.
#[derive(Clone, Copy, Debug)]
struct Decimal {
    negative: bool,
    mantissa: u64,
    exponent: i32,
}

impl Decimal {
    /// Clinger's fast path: exact when the mantissa and the power of ten are exact f64s.
    fn exact(self) -> Option<f64> {
        if self.mantissa > 1 << 53 || !(-22..=22).contains(&self.exponent) {
            return None;
        }
        let m = self.mantissa as f64;
        let p = POW10[self.exponent.unsigned_abs() as usize];
        let v = if self.exponent < 0 { m / p } else { m * p };
        Some(if self.negative { -v } else { v })
    }
}

/// Reads the JSON number at `i`: where it ends, and its digits when they fit a [`Decimal`]
/// (at most 19 significant digits; `None` sends it to the slow path). `None` overall only
/// for text that is not a number.
fn number(b: &[u8], mut i: usize) -> Option<(Option<Decimal>, usize)> {
    let negative = b.get(i) == Some(&b'-');
    i += usize::from(negative);
    let first = i;
    // JSON: no leading zeros (`01`), a digit after `.`, a digit in an exponent.
    if b.get(i) == Some(&b'0') && matches!(b.get(i + 1), Some(b'0'..=b'9')) {
        return None;
    }
    // Wrapping: the value is garbage past 19 significant digits, and then not used.
    let mut mantissa = 0u64;
    while let Some(&c @ b'0'..=b'9') = b.get(i) {
        mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
        i += 1;
    }
    if i == first {
        return None;
    }
    let mut digits = i - first;
    let mut exponent = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        (mantissa, i) = fraction(b, start, mantissa)?;
        digits += i - start;
        exponent = -((i - start) as i64);
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let e;
        (e, i) = exponent_part(b, i + 1)?;
        exponent += e;
    }
    match b.get(i) {
        None | Some(b',' | b']' | b' ' | b'\t' | b'\n' | b'\r') => {}
        Some(_) => return None,
    }
    // Leading zeros (`0.000123`) carry no precision; count them only when it matters.
    if digits > 19 {
        let zeros = b[first..i]
            .iter()
            .take_while(|&&c| c == b'0' || c == b'.')
            .filter(|&&c| c == b'0')
            .count();
        digits -= zeros;
    }
    let decimal = (digits <= 19).then(|| Decimal {
        negative,
        mantissa,
        exponent: exponent.clamp(-1000, 1000) as i32,
    });
    Some((decimal, i))
}

/// The digits after a number's `.` (from `i`), appended to `mantissa` (wrapping, like the
/// integer part): the new mantissa and where the digits end. At least one digit is required.
#[inline(always)]
fn fraction(b: &[u8], mut i: usize, mut mantissa: u64) -> Option<(u64, usize)> {
    let start = i;
    // Eight digits at a time (random data is written with 8 to 9 fraction digits).
    while let Some(chunk) = b.get(i..i + 8) {
        let v = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        if !eight_digits(v) {
            break;
        }
        mantissa = mantissa
            .wrapping_mul(100_000_000)
            .wrapping_add(parse_eight_digits(v));
        i += 8;
    }
    while let Some(&c @ b'0'..=b'9') = b.get(i) {
        mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(c - b'0'));
        i += 1;
    }
    (i > start).then_some((mantissa, i))
}

/// The exponent after a number's `e` (from `i`: an optional sign, then at least one digit),
/// saturated far past any finite value, and where it ends.
#[inline(always)]
fn exponent_part(b: &[u8], mut i: usize) -> Option<(i64, usize)> {
    let sign = match b.get(i) {
        Some(b'-') => {
            i += 1;
            -1
        }
        Some(b'+') => {
            i += 1;
            1
        }
        _ => 1,
    };
    let mut e = 0i64;
    let start = i;
    while let Some(&c @ b'0'..=b'9') = b.get(i) {
        e = (e * 10 + i64::from(c - b'0')).min(1 << 32);
        i += 1;
    }
    (i > start).then_some((sign * e, i))
}

/// Whether the eight bytes of `v` (little-endian) are all ASCII digits.
fn eight_digits(v: u64) -> bool {
    let a = v.wrapping_add(0x4646_4646_4646_4646);
    let b = v.wrapping_sub(0x3030_3030_3030_3030);
    (a | b) & 0x8080_8080_8080_8080 == 0
}

/// The value of eight ASCII digits (little-endian, first digit in the low byte).
fn parse_eight_digits(v: u64) -> u64 {
    const MASK: u64 = 0x0000_00FF_0000_00FF;
    const MUL1: u64 = 0x000F_4240_0000_0064; // 100 + (1_000_000 << 32)
    const MUL2: u64 = 0x0000_2710_0000_0001; // 1 + (10_000 << 32)
    let v = v.wrapping_sub(0x3030_3030_3030_3030);
    let v = v.wrapping_mul(10).wrapping_add(v >> 8);
    (v & MASK)
        .wrapping_mul(MUL1)
        .wrapping_add(((v >> 16) & MASK).wrapping_mul(MUL2))
        >> 32
}

/// A JSON integer literal (`-`, then `0` or digits without a leading zero; no fraction or
/// exponent) in range.
pub(crate) fn int<T: std::str::FromStr>(tok: &str) -> Option<T> {
    let digits = tok.strip_prefix('-').unwrap_or(tok).as_bytes();
    let valid = match digits {
        [] => false,
        [b'0', rest @ ..] => rest.is_empty(),
        _ => digits.iter().all(u8::is_ascii_digit),
    };
    if !valid {
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

    /// `float_at` on `text` (a JSON number) against the standard library's parser.
    fn same_as_std(text: &str) -> Result<(), TestCaseError> {
        let raw = format!("{text},");
        let std32 = text.parse::<f32>().ok().filter(|v| v.is_finite());
        let std64 = text.parse::<f64>().ok().filter(|v| v.is_finite());
        let ours32 = float_at::<f32>(&raw, 0);
        let ours64 = float_at::<f64>(&raw, 0);
        prop_assert_eq!(
            ours32.map(|(v, e)| (v.to_bits(), e)),
            std32.map(|v| (v.to_bits(), text.len())),
            "f32 {}",
            text
        );
        prop_assert_eq!(
            ours64.map(|(v, e)| (v.to_bits(), e)),
            std64.map(|v| (v.to_bits(), text.len())),
            "f64 {}",
            text
        );
        Ok(())
    }

    #[test]
    fn number_edge_cases_match_std() {
        let cases = [
            "0",
            "-0",
            "0.0",
            "-0.0",
            "1",
            "-1",
            "0.1",
            "1e22",
            "1e23",
            "1e-22",
            "1e-23",
            "9007199254740992",
            "9007199254740993",
            "1234567890123456789",
            "12345678901234567890",
            "0.000000000000000000000000000001",
            "3.4028235e38",
            "3.4028236e38",
            "1e39",
            "1e-46",
            "1.1754942e-38",
            "4.9e-324",
            "1.7976931348623157e308",
            "1e309",
            "100000000000000000000000",
            // An FP32 rounding midpoint (1 + 2^-24) and its neighbours: the fast path must
            // hand the midpoint itself to the exact parser.
            "1.000000059604644775390625",
            "1.0000000596046448",
            "1.00000005960464477539",
        ];
        for text in cases {
            same_as_std(text).unwrap();
        }
    }

    fn fixed_types() -> impl Strategy<Value = DataType> {
        prop::sample::select(DataType::ALL[..12].to_vec())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Decimal text of every shape reads to the same bits as `str::parse`.
        #[test]
        fn floats_match_std(
            negative in any::<bool>(),
            int in prop_oneof![Just(0u64), 0u64..1000, any::<u64>()],
            frac in prop::option::of("[0-9]{1,22}"),
            exp in prop::option::of(-60i32..60),
        ) {
            let mut text = format!("{}{int}", if negative { "-" } else { "" });
            if let Some(f) = frac {
                text = format!("{text}.{f}");
            }
            if let Some(e) = exp {
                text = format!("{text}e{e}");
            }
            same_as_std(&text)?;
        }

        /// FP32 midpoints (exact decimals halfway between neighbours) and every f32's and
        /// f64's shortest text read exactly.
        #[test]
        fn midpoints_and_shortest_text_match_std(bits in any::<u32>(), wide in any::<u64>()) {
            let x = f32::from_bits(bits);
            prop_assume!(x.is_finite() && x.next_up().is_finite());
            let mid = (f64::from(x) + f64::from(x.next_up())) / 2.0;
            same_as_std(&format!("{mid:e}"))?;
            same_as_std(&format!("{mid}"))?;
            same_as_std(&format!("{x}"))?;
            same_as_std(&format!("{x:e}"))?;
            let y = f64::from_bits(wide);
            prop_assume!(y.is_finite());
            same_as_std(&format!("{y:e}"))?;
        }

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
