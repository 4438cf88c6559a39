//! One pass over the common JSON request: `{"id": …, "inputs": [{"name": …, "datatype": …,
//! "shape": […], "data": […]}, …], "parameters": {"binary_data_output": …, "model_version":
//! …}}` (what `encode_request` writes), with numbers read straight into each tensor's packed
//! buffer while they are checked.
//!
//! The serde path (`request.rs`) lets serde_json validate the whole body and capture each
//! `data` array as raw text, then reads that text again with the float scanner; for a large
//! tensor that validation is about a third of the decode. This path validates and converts in
//! the same pass, and takes only what it is sure of: keys and strings of printable ASCII
//! without escapes, no key twice, only the keys above, `datatype` and `shape` before `data`,
//! a fixed-size datatype, non-negative integer dimensions, `data` that the float scanner
//! accepts whole with exactly the shape's element count. On anything else it returns `None`
//! and the serde path decodes the body, so every error, and every body it does not take, is
//! decided there as before. For a body it takes, the result is the one the serde path gives
//! (property-tested against it, on valid and on randomly damaged bodies).

use super::data_fast::{int, parse_fixed_prefix};
use super::tensor::{checked_count, Tensor, TensorData};
use super::types::DataType;

/// What a request of the common shape holds (`request.rs` makes the `InferenceRequest`).
pub(crate) struct Decoded {
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    pub model_version: Option<String>,
    pub binary_data_output: bool,
}

/// The request in `header` (a JSON body without binary data), if it has the common shape.
pub(crate) fn decode(header: &[u8]) -> Option<Decoded> {
    let text = std::str::from_utf8(header).ok()?;
    let mut p = Cursor { text, at: 0 };
    p.open(b'{')?;
    let mut id = None;
    let mut inputs = None;
    let mut parameters = None;
    loop {
        match p.key()? {
            "id" if id.is_none() => id = Some(p.string()?.to_string()),
            "inputs" if inputs.is_none() => inputs = Some(p.tensors()?),
            "parameters" if parameters.is_none() => parameters = Some(p.parameters()?),
            _ => return None,
        }
        if p.close_or_comma(b'}')? {
            break;
        }
    }
    p.ws();
    if p.at != text.len() {
        return None;
    }
    let (model_version, binary_data_output) = parameters.unwrap_or_default();
    Some(Decoded {
        id,
        inputs: inputs?,
        model_version,
        binary_data_output: binary_data_output.unwrap_or(false),
    })
}

struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn ws(&mut self) {
        let b = self.text.as_bytes();
        while matches!(b.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// Whitespace, then `byte`.
    fn open(&mut self, byte: u8) -> Option<()> {
        self.ws();
        (self.text.as_bytes().get(self.at) == Some(&byte)).then(|| self.at += 1)
    }

    /// After a member or element: `,` (false: another follows) or `close` (true).
    fn close_or_comma(&mut self, close: u8) -> Option<bool> {
        self.ws();
        let c = *self.text.as_bytes().get(self.at)?;
        self.at += 1;
        match c {
            b',' => Some(false),
            c if c == close => Some(true),
            _ => None,
        }
    }

    /// A string of printable ASCII without escapes.
    fn string(&mut self) -> Option<&'a str> {
        self.open(b'"')?;
        let start = self.at;
        let b = self.text.as_bytes();
        let len = b[start..].iter().position(|&c| c == b'"')?;
        let s = &self.text[start..start + len];
        if !s.bytes().all(|c| (0x20..0x7f).contains(&c) && c != b'\\') {
            return None;
        }
        self.at = start + len + 1;
        Some(s)
    }

    /// A member's key and its colon.
    fn key(&mut self) -> Option<&'a str> {
        let key = self.string()?;
        self.open(b':')?;
        Some(key)
    }

    /// `{"binary_data_output": true|false, "model_version": "…"}`, either or none.
    fn parameters(&mut self) -> Option<(Option<String>, Option<bool>)> {
        self.open(b'{')?;
        let mut version = None;
        let mut binary = None;
        self.ws();
        if self.text.as_bytes().get(self.at) == Some(&b'}') {
            self.at += 1;
            return Some((version, binary));
        }
        loop {
            match self.key()? {
                "model_version" if version.is_none() => {
                    version = Some(self.string()?.to_string());
                }
                "binary_data_output" if binary.is_none() => {
                    self.ws();
                    let rest = &self.text[self.at..];
                    let value = [("true", true), ("false", false)]
                        .into_iter()
                        .find(|(word, _)| rest.starts_with(word))?;
                    self.at += value.0.len();
                    binary = Some(value.1);
                }
                _ => return None,
            }
            if self.close_or_comma(b'}')? {
                return Some((version, binary));
            }
        }
    }

    /// `[tensor, …]`, at least one.
    fn tensors(&mut self) -> Option<Vec<Tensor>> {
        self.open(b'[')?;
        let mut tensors = Vec::with_capacity(1);
        loop {
            tensors.push(self.tensor()?);
            if self.close_or_comma(b']')? {
                return Some(tensors);
            }
        }
    }

    fn tensor(&mut self) -> Option<Tensor> {
        self.open(b'{')?;
        let mut name = None;
        let mut datatype = None;
        let mut shape = None;
        let mut data = None;
        loop {
            match self.key()? {
                "name" if name.is_none() => name = Some(self.string()?.to_string()),
                "datatype" if datatype.is_none() => {
                    let parsed = DataType::parse(self.string()?)?;
                    parsed.element_size()?;
                    datatype = Some(parsed);
                }
                "shape" if shape.is_none() => shape = Some(self.dims()?),
                "data" if data.is_none() => {
                    let datatype = datatype?;
                    let shape = shape.as_deref()?;
                    let expected = checked_count(shape)?;
                    self.ws();
                    let rest = &self.text[self.at..];
                    let (packed, count, end) = parse_fixed_prefix(rest, datatype, expected)?;
                    if count != expected {
                        return None;
                    }
                    self.at += end;
                    data = Some(packed);
                }
                _ => return None,
            }
            if self.close_or_comma(b'}')? {
                break;
            }
        }
        Some(Tensor {
            name: name?,
            datatype: datatype?,
            shape: shape?,
            data: TensorData::Fixed(data?),
        })
    }

    /// `[d, …]` of JSON integers from 0 to `i64::MAX` (possibly none).
    fn dims(&mut self) -> Option<Vec<usize>> {
        self.open(b'[')?;
        let mut dims = Vec::with_capacity(4);
        self.ws();
        if self.text.as_bytes().get(self.at) == Some(&b']') {
            self.at += 1;
            return Some(dims);
        }
        loop {
            self.ws();
            let b = self.text.as_bytes();
            let start = self.at;
            while matches!(b.get(self.at), Some(b'0'..=b'9')) {
                self.at += 1;
            }
            // Digits only (a sign sends the body to serde), read as a JSON integer in i64.
            let d: i64 = int(&self.text[start..self.at])?;
            dims.push(usize::try_from(d).ok()?);
            if self.close_or_comma(b']')? {
                return Some(dims);
            }
        }
    }
}
