//! Reading NumPy `.npy` files (format versions 1–3, C order, little-endian numeric dtypes).

/// An array read from a `.npy` file, converted to `f64`.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

/// Why a `.npy` file could not be read; the message is meant for the job's author.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NpyError(pub String);

fn err(message: impl Into<String>) -> NpyError {
    NpyError(message.into())
}

/// Parses a whole `.npy` file.
pub fn parse(bytes: &[u8]) -> Result<NpyArray, NpyError> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(err("not a .npy file (bad magic)"));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(err(format!("unsupported .npy format version {v}"))),
    };
    let end = start
        .checked_add(header_len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| err("truncated .npy header"))?;
    let header = std::str::from_utf8(&bytes[start..end]).map_err(|_| err("header is not text"))?;
    let descr = dict_value(header, "descr").ok_or_else(|| err("header has no 'descr'"))?;
    let descr = descr.trim_matches(|c| c == '\'' || c == '"');
    let fortran =
        dict_value(header, "fortran_order").ok_or_else(|| err("header has no 'fortran_order'"))?;
    if fortran.starts_with("True") {
        return Err(err(
            "Fortran-order arrays are not supported (save with np.ascontiguousarray)",
        ));
    }
    let shape = parse_shape(header)?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| err("shape too large"))?;
    let data = &bytes[end..];
    let (size, convert) = element(descr)?;
    if data.len() != count * size {
        return Err(err(format!(
            "shape {shape:?} of {descr} needs {} data bytes, the file has {}",
            count * size,
            data.len()
        )));
    }
    let values = data.chunks_exact(size).map(convert).collect();
    Ok(NpyArray { shape, values })
}

type Convert = fn(&[u8]) -> f64;

fn element(descr: &str) -> Result<(usize, Convert), NpyError> {
    Ok(match descr {
        "<f4" => (4, |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64),
        "<f8" => (8, |c| {
            f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
        }),
        "|i1" | "<i1" => (1, |c| c[0] as i8 as f64),
        "|u1" | "<u1" => (1, |c| c[0] as f64),
        "|b1" => (1, |c| if c[0] != 0 { 1.0 } else { 0.0 }),
        "<i2" => (2, |c| i16::from_le_bytes([c[0], c[1]]) as f64),
        "<u2" => (2, |c| u16::from_le_bytes([c[0], c[1]]) as f64),
        "<i4" => (4, |c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64),
        "<u4" => (4, |c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64),
        "<i8" => (8, |c| {
            i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f64
        }),
        "<u8" => (8, |c| {
            u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f64
        }),
        other => {
            return Err(err(format!(
                "unsupported dtype {other:?} (expected little-endian float, int, uint or bool)"
            )))
        }
    })
}

/// The text after `'key':` up to the next top-level comma.
fn dict_value<'h>(header: &'h str, key: &str) -> Option<&'h str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

fn parse_shape(header: &str) -> Result<Vec<usize>, NpyError> {
    let at = header
        .find("'shape'")
        .ok_or_else(|| err("header has no 'shape'"))?;
    let rest = &header[at..];
    let open = rest.find('(').ok_or_else(|| err("bad 'shape'"))?;
    let close = rest.find(')').ok_or_else(|| err("bad 'shape'"))?;
    rest.get(open + 1..close)
        .ok_or_else(|| err("bad 'shape'"))?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| err(format!("bad dimension {s:?} in 'shape'")))
        })
        .collect()
}

/// Writes a C-order `<f4` or `<i8` `.npy` file (version 1); used by tests and tools.
pub fn write_f32(shape: &[usize], values: &[f32]) -> Vec<u8> {
    let body: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    with_header("<f4", shape, body)
}

/// Writes a C-order `<i8` `.npy` file (version 1).
pub fn write_i64(shape: &[usize], values: &[i64]) -> Vec<u8> {
    let body: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    with_header("<i8", shape, body)
}

fn with_header(descr: &str, shape: &[usize], body: Vec<u8>) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_f32_and_i64() {
        let a = parse(&write_f32(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.5])).expect("parses");
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.values, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]);
        let b = parse(&write_i64(&[3], &[0, 2, -1])).expect("parses");
        assert_eq!(b.shape, vec![3]);
        assert_eq!(b.values, vec![0.0, 2.0, -1.0]);
    }

    #[test]
    fn rejects_bad_files() {
        assert!(parse(b"not numpy at all").is_err());
        let mut truncated = write_f32(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
        truncated.pop();
        assert!(parse(&truncated).unwrap_err().0.contains("data bytes"));
        let big_endian = with_header(">f4", &[1], vec![0, 0, 0, 0]);
        assert!(parse(&big_endian)
            .unwrap_err()
            .0
            .contains("unsupported dtype"));
        let fortran = write_f32(&[1], &[1.0]);
        let text = String::from_utf8_lossy(&fortran).replace("False", "True ");
        assert!(parse(text.as_bytes()).is_err());
    }

    #[test]
    fn reads_a_numpy_written_header() {
        // Header exactly as numpy 2.x writes `np.arange(4, dtype='<f8').reshape(2, 2)`.
        let mut file = b"\x93NUMPY\x01\x00v\x00".to_vec();
        let mut header = "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }".to_string();
        while header.len() < 117 {
            header.push(' ');
        }
        header.push('\n');
        file.extend_from_slice(header.as_bytes());
        for v in [0.0f64, 1.0, 2.0, 3.0] {
            file.extend_from_slice(&v.to_le_bytes());
        }
        let a = parse(&file).expect("parses");
        assert_eq!((a.shape, a.values), (vec![2, 2], vec![0.0, 1.0, 2.0, 3.0]));
    }
}
