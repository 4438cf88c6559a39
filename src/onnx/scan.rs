//! Every tensor of an ONNX model file, read without its weights: names, types, shapes, where the
//! data lives and how many bytes it holds, for checking external data and sizing a version
//! before ONNX Runtime loads it.
//!
//! The file is walked as protobuf, field by field, from any [`Read`] + [`Seek`]: the fields that
//! can hold a tensor are descended into (graph initializers, `Constant` and other node
//! attributes, subgraphs of `If`/`Loop`/`Scan`, sparse tensors, functions, training graphs) and
//! every other field, weights included, is skipped with a seek, so a 2 GB model costs a few
//! reads. The walk is bounded: nesting depth, string lengths, entries per tensor and the number
//! of tensors are capped, and a length that runs past its enclosing message is an error.

use std::io::{Read, Seek, SeekFrom};

/// How deep messages may nest (a model, its graph, a node, an attribute, a subgraph, ...).
pub const MAX_DEPTH: usize = 48;
/// Longest name, key or value read (bytes).
pub const MAX_STRING: u64 = 64 * 1024;
/// Most `external_data` entries and dimensions per tensor.
pub const MAX_ENTRIES: usize = 64;
/// Most tensors in one model.
pub const MAX_TENSORS: usize = 1 << 20;

/// One tensor found in the model, wherever it sits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TensorEntry {
    pub name: String,
    /// `TensorProto.DataType`.
    pub data_type: i32,
    pub dims: Vec<i64>,
    /// Bytes of data written inside the model file (`raw_data` or the typed fields).
    pub embedded_bytes: u64,
    /// The `external_data` entries, as written.
    pub external_data: Vec<(String, String)>,
    /// `TensorProto.DataLocation` (1: external).
    pub data_location: i32,
}

/// Why a model file could not be walked.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("reading the model file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not an ONNX model: {0} at byte {1}")]
    Malformed(&'static str, u64),
    #[error("the model exceeds a limit: {0}")]
    TooLarge(&'static str),
}

/// What a length-delimited field of a message holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Model,
    Graph,
    Node,
    Attribute,
    Tensor,
    SparseTensor,
    Function,
    TrainingInfo,
    Other,
}

/// The message kind of field `field` of a `kind` message (field numbers of `onnx.proto`).
fn child(kind: Kind, field: u64) -> Kind {
    use Kind::*;
    match (kind, field) {
        (Model, 7) | (TrainingInfo, 1 | 2) | (Attribute, 6 | 11) => Graph,
        (Model, 20) => TrainingInfo,
        (Model, 25) => Function,
        (Graph, 1) | (Function, 7) => Node,
        (Node, 5) | (Function, 11) => Attribute,
        (Graph, 5) | (Attribute, 5 | 10) | (SparseTensor, 1 | 2) => Tensor,
        (Graph, 15) | (Attribute, 22 | 23) => SparseTensor,
        _ => Other,
    }
}

/// Every tensor of the model read from `reader` (positioned at the model's first byte).
pub fn scan_tensors<R: Read + Seek>(reader: R) -> Result<Vec<TensorEntry>, ScanError> {
    let mut walker = Walker {
        reader,
        pos: 0,
        tensors: Vec::new(),
    };
    walker.reader.seek(SeekFrom::Start(0))?;
    let end = walker.reader.seek(SeekFrom::End(0))?;
    walker.reader.seek(SeekFrom::Start(0))?;
    walker.message(Kind::Model, end, 0)?;
    Ok(walker.tensors)
}

struct Walker<R> {
    reader: R,
    /// Offset of the next byte `reader` returns.
    pos: u64,
    tensors: Vec<TensorEntry>,
}

/// Protobuf wire types.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

impl<R: Read + Seek> Walker<R> {
    fn byte(&mut self) -> Result<u8, ScanError> {
        let mut b = [0u8; 1];
        self.reader.read_exact(&mut b).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ScanError::Malformed("truncated", self.pos),
            _ => ScanError::Io(e),
        })?;
        self.pos += 1;
        Ok(b[0])
    }

    fn varint(&mut self) -> Result<u64, ScanError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ScanError::Malformed(
            "varint longer than 10 bytes",
            self.pos,
        ))
    }

    fn skip(&mut self, n: u64, end: u64) -> Result<(), ScanError> {
        let to = self.pos.checked_add(n).filter(|&to| to <= end);
        let to = to.ok_or(ScanError::Malformed(
            "field runs past its message",
            self.pos,
        ))?;
        // Relative, so a buffered reader keeps its buffer for short skips.
        self.reader.seek_relative((to - self.pos) as i64)?;
        self.pos = to;
        Ok(())
    }

    /// The length of a length-delimited field, checked against the enclosing `end`.
    fn length(&mut self, end: u64) -> Result<u64, ScanError> {
        let len = self.varint()?;
        match self.pos.checked_add(len) {
            Some(stop) if stop <= end => Ok(len),
            _ => Err(ScanError::Malformed(
                "field runs past its message",
                self.pos,
            )),
        }
    }

    /// Skips a field of `wire` type whose key was read; returns how many payload bytes it had.
    fn skip_field(&mut self, wire: u64, end: u64) -> Result<u64, ScanError> {
        let n = match wire {
            VARINT => {
                self.varint()?;
                return Ok(8);
            }
            FIXED64 => 8,
            LEN => self.length(end)?,
            FIXED32 => 4,
            _ => return Err(ScanError::Malformed("unsupported wire type", self.pos)),
        };
        self.skip(n, end)?;
        Ok(n)
    }

    fn bytes(&mut self, end: u64) -> Result<Vec<u8>, ScanError> {
        let len = self.length(end)?;
        if len > MAX_STRING {
            return Err(ScanError::TooLarge(
                "a name or external data entry over 64 KiB",
            ));
        }
        let mut buf = vec![0u8; len as usize];
        self.reader.read_exact(&mut buf)?;
        self.pos += len;
        Ok(buf)
    }

    fn string(&mut self, end: u64) -> Result<String, ScanError> {
        let at = self.pos;
        String::from_utf8(self.bytes(end)?)
            .map_err(|_| ScanError::Malformed("string is not UTF-8", at))
    }

    /// Checks that a nested message or packed field ended where its length said.
    fn ended_at(&self, stop: u64) -> Result<(), ScanError> {
        match self.pos == stop {
            true => Ok(()),
            false => Err(ScanError::Malformed(
                "a field runs past its length",
                self.pos,
            )),
        }
    }

    /// Walks the fields of a `kind` message that ends at `end`.
    fn message(&mut self, kind: Kind, end: u64, depth: usize) -> Result<(), ScanError> {
        if depth > MAX_DEPTH {
            return Err(ScanError::TooLarge("messages nested more than 48 deep"));
        }
        if kind == Kind::Tensor {
            return self.tensor(end);
        }
        while self.pos < end {
            let key = self.varint()?;
            let field = key >> 3;
            let wire = key & 7;
            let inner = child(kind, field);
            if wire == LEN && inner != Kind::Other {
                let len = self.length(end)?;
                let stop = self.pos + len;
                self.message(inner, stop, depth + 1)?;
                self.ended_at(stop)?;
            } else {
                self.skip_field(wire, end)?;
            }
        }
        Ok(())
    }

    /// Reads one `TensorProto` ending at `end`, skipping its data.
    fn tensor(&mut self, end: u64) -> Result<(), ScanError> {
        if self.tensors.len() >= MAX_TENSORS {
            return Err(ScanError::TooLarge("more than 2^20 tensors"));
        }
        let mut t = TensorEntry::default();
        while self.pos < end {
            let key = self.varint()?;
            match (key >> 3, key & 7) {
                (1, VARINT) => t.dims.push(self.varint()? as i64),
                (1, LEN) => {
                    let len = self.length(end)?;
                    let stop = self.pos + len;
                    while self.pos < stop && t.dims.len() <= MAX_ENTRIES {
                        t.dims.push(self.varint()? as i64);
                    }
                    if t.dims.len() <= MAX_ENTRIES {
                        self.ended_at(stop)?;
                    }
                }
                (2, VARINT) => t.data_type = self.varint()? as i32,
                (8, LEN) => t.name = self.string(end)?,
                (13, LEN) => {
                    let len = self.length(end)?;
                    let stop = self.pos + len;
                    t.external_data.push(self.entry(stop)?);
                    self.ended_at(stop)?;
                }
                (14, VARINT) => t.data_location = self.varint()? as i32,
                (4..=7 | 9..=11, wire) => t.embedded_bytes += self.skip_field(wire, end)?,
                (_, wire) => {
                    self.skip_field(wire, end)?;
                }
            }
            if t.dims.len() > MAX_ENTRIES || t.external_data.len() > MAX_ENTRIES {
                return Err(ScanError::TooLarge(
                    "a tensor with over 64 dimensions or entries",
                ));
            }
        }
        self.tensors.push(t);
        Ok(())
    }

    /// A `StringStringEntryProto` ending at `end`: (key, value).
    fn entry(&mut self, end: u64) -> Result<(String, String), ScanError> {
        let mut key = String::new();
        let mut value = String::new();
        while self.pos < end {
            let field = self.varint()?;
            match (field >> 3, field & 7) {
                (1, LEN) => key = self.string(end)?,
                (2, LEN) => value = self.string(end)?,
                (_, wire) => {
                    self.skip_field(wire, end)?;
                }
            }
        }
        Ok((key, value))
    }
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
