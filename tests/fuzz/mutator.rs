//! A small seeded mutator over byte strings: bit flips, interesting bytes, inserts, deletes,
//! splices of JSON tokens from a dictionary, numbers replaced by edge values, crossover with
//! another input, and huge repeats. Deterministic for a given seed, so a run can be replayed.

use rand::rngs::SmallRng;
use rand::Rng;

/// Largest input the mutator produces.
pub const MAX_LEN: usize = 64 * 1024;

/// Tokens spliced into inputs: JSON structure, the contract's field names and values, and
/// numbers at the edges of every integer and float type.
pub const DICTIONARY: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "\\",
    "null",
    "true",
    "false",
    "\"\"",
    "{}",
    "[]",
    "[[[[[[[[[[[[[[[[",
    "]]]]]]]]",
    "{\"a\":{\"a\":{\"a\":",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\\uDFFF\"",
    "\"é\"",
    "\"\u{10ffff}\"",
    "0",
    "-0",
    "1",
    "-1",
    "0.5",
    "1e308",
    "-1e308",
    "1e309",
    "1e-400",
    "2.2250738585072014e-308",
    "3.4028235e38",
    "3.5e38",
    "65504",
    "65520",
    "127",
    "128",
    "-128",
    "-129",
    "255",
    "256",
    "32767",
    "32768",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "-2147483649",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "9000000000000000000",
    "\"NaN\"",
    "\"Infinity\"",
    "\"-Infinity\"",
    "NaN",
    "Infinity",
    "\"id\"",
    "\"inputs\"",
    "\"outputs\"",
    "\"name\"",
    "\"shape\"",
    "\"datatype\"",
    "\"data\"",
    "\"parameters\"",
    "\"binary_data_size\"",
    "\"binary_data\"",
    "\"binary_data_output\"",
    "\"model_version\"",
    "\"classification\"",
    "\"class_count\"",
    "\"BOOL\"",
    "\"UINT8\"",
    "\"UINT16\"",
    "\"UINT32\"",
    "\"UINT64\"",
    "\"INT8\"",
    "\"INT16\"",
    "\"INT32\"",
    "\"INT64\"",
    "\"FP16\"",
    "\"FP32\"",
    "\"FP64\"",
    "\"BYTES\"",
    "\"BF16\"",
    "\"input\"",
    "\"probabilities\"",
    "\"ids\"",
    "\"mask\"",
    "\"x\"",
    "\"sr\"",
    "\"y\"",
    "\"model_name\"",
    "\"layers\"",
    "\"units\"",
    "\"activation\"",
    "\"relu\"",
    "\"softmax\"",
    "\"sigmoid\"",
    "\"linear\"",
    "\"loss\"",
    "\"mse\"",
    "\"sparse_categorical_crossentropy\"",
    "\"optimizer\"",
    "\"type\"",
    "\"adam\"",
    "\"sgd\"",
    "\"learning_rate\"",
    "\"momentum\"",
    "\"schedule\"",
    "\"exponential_decay\"",
    "\"step_decay\"",
    "\"decay_rate\"",
    "\"decay_steps\"",
    "\"decay_epochs\"",
    "\"epochs\"",
    "\"batch_size\"",
    "\"validation_split\"",
    "\"seed\"",
    "\"shuffle\"",
    "\"early_stopping\"",
    "\"patience\"",
    "\"min_delta\"",
    "\"init_from\"",
    "\"uri\"",
    "\"format\"",
    "\"csv\"",
    "\"npy\"",
    "\"label_column\"",
    "\"file:///\"",
    "\"file:///../../etc/passwd\"",
    "\"s3://b/k\"",
    "\"file:///%00\"",
    "\"file:///%ff\"",
];

/// Numbers a number in the input may be replaced by.
const EDGE_NUMBERS: &[&str] = &[
    "0",
    "-0",
    "-1",
    "1",
    "255",
    "65536",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "9000000000000000000",
    "1e308",
    "1e309",
    "-1e309",
    "1e-400",
    "0.0000001",
    "1.5",
    "99999999999999999999999999999",
    "65504",
    "3.4028236e38",
];

const INTERESTING_BYTES: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'-', b'.', b'e',
    b'0', b'9', b' ', b'\n',
];

/// Applies 1–8 stacked mutations to `input`; `other` is a second input for crossover.
pub fn mutate(rng: &mut SmallRng, input: &mut Vec<u8>, other: &[u8]) {
    // 1 mutation half the time, 2 a quarter, …: most inputs stay close to a valid one.
    let rounds = 1 + (rng.random::<u8>() | 0x80).trailing_zeros() as usize;
    for _ in 0..rounds {
        mutate_once(rng, input, other);
    }
    input.truncate(MAX_LEN);
}

fn mutate_once(rng: &mut SmallRng, input: &mut Vec<u8>, other: &[u8]) {
    let len = input.len();
    let at = |rng: &mut SmallRng| rng.random_range(0..=len);
    match rng.random_range(0..11u8) {
        0 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] ^= 1 << rng.random_range(0..8);
        }
        1 if len > 0 => {
            let i = rng.random_range(0..len);
            input[i] = INTERESTING_BYTES[rng.random_range(0..INTERESTING_BYTES.len())];
        }
        2 => {
            let i = at(rng);
            let n = rng.random_range(1..=8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            input.splice(i..i, bytes);
        }
        3 if len > 0 => {
            let i = rng.random_range(0..len);
            let n = rng.random_range(1..=(len - i).min(64));
            input.drain(i..i + n);
        }
        4 | 5 => {
            let token = DICTIONARY[rng.random_range(0..DICTIONARY.len())].as_bytes();
            let i = at(rng);
            if rng.random_bool(0.5) || len == 0 {
                input.splice(i..i, token.iter().copied());
            } else {
                let end = (i + token.len()).min(len);
                input.splice(i..end, token.iter().copied());
            }
        }
        6 => replace_number(rng, input),
        7 if !other.is_empty() => {
            // Crossover: a piece of `other` over or into `input`.
            let a = rng.random_range(0..other.len());
            let b = rng.random_range(a..=other.len().min(a + 256));
            let i = at(rng);
            input.splice(i..i, other[a..b].iter().copied());
        }
        8 if len > 0 => {
            // Huge repeat: a short piece copied up to a few thousand times.
            let a = rng.random_range(0..len);
            let b = rng.random_range(a + 1..=len.min(a + 16));
            let times = 1usize << rng.random_range(1..13);
            let piece = input[a..b].to_vec();
            let room = MAX_LEN.saturating_sub(len) / piece.len();
            let repeat: Vec<u8> = piece.repeat(times.min(room));
            input.splice(b..b, repeat);
        }
        9 if len > 0 => input.truncate(rng.random_range(0..len)),
        _ if len > 1 => {
            // Swap two bytes.
            let i = rng.random_range(0..len);
            let j = rng.random_range(0..len);
            input.swap(i, j);
        }
        _ => input.push(rng.random()),
    }
}

/// Replaces a run of number characters starting at a random digit with an edge number.
fn replace_number(rng: &mut SmallRng, input: &mut Vec<u8>) {
    let digits: Vec<usize> = (0..input.len())
        .filter(|&i| input[i].is_ascii_digit())
        .collect();
    let edge = EDGE_NUMBERS[rng.random_range(0..EDGE_NUMBERS.len())].as_bytes();
    let Some(&start) = digits.get(rng.random_range(0..digits.len().max(1))) else {
        input.extend_from_slice(edge);
        return;
    };
    let mut start = start;
    while start > 0 && is_number_byte(input[start - 1]) {
        start -= 1;
    }
    let mut end = start;
    while end < input.len() && is_number_byte(input[end]) {
        end += 1;
    }
    input.splice(start..end, edge.iter().copied());
}

fn is_number_byte(b: u8) -> bool {
    b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E')
}

/// Bytes as a reader of structured values (for targets that build values, not parse bytes):
/// each read takes what it needs and yields zeros once the input is used up.
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    pub fn u8(&mut self) -> u8 {
        let (first, rest) = self
            .bytes
            .split_first()
            .map_or((0, &[][..]), |(f, r)| (*f, r));
        self.bytes = rest;
        first
    }

    pub fn u64(&mut self) -> u64 {
        let mut out = [0u8; 8];
        for b in &mut out {
            *b = self.u8();
        }
        u64::from_le_bytes(out)
    }

    /// Up to `max` bytes, the count read first.
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = (self.u8() as usize).min(max).min(self.bytes.len());
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        head
    }
}
