//! A reader for NumPy `.npy` files holding float32 or float64 encodings.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// Reads a little-endian `f4` or `f8` array of shape `(N, D)` or `(D,)`, C order.
pub(crate) fn read(path: &Path) -> Result<Vec<Vec<f32>>> {
    parse(&std::fs::read(path)?)
}

fn parse(bytes: &[u8]) -> Result<Vec<Vec<f32>>> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("not a .npy file (no \\x93NUMPY magic)");
    }
    let (header_len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => bail!(".npy format version {v} is not supported"),
    };
    let header = bytes
        .get(start..start + header_len)
        .context("header runs past the end of the file")?;
    let header = std::str::from_utf8(header).context("header is not text")?;
    let field = |key: &str| -> Result<&str> {
        let at = header
            .find(&format!("'{key}'"))
            .with_context(|| format!("header has no '{key}'"))?;
        Ok(header[at + key.len() + 2..]
            .trim_start()
            .trim_start_matches(':')
            .trim_start())
    };
    let width = match field("descr")? {
        d if d.starts_with("'<f4'") => 4,
        d if d.starts_with("'<f8'") => 8,
        d => bail!(
            "dtype {} is not supported: use little-endian float32 or float64",
            d.split(',').next().unwrap_or(d)
        ),
    };
    if field("fortran_order")?.starts_with("True") {
        bail!("Fortran-ordered arrays are not supported: save with np.ascontiguousarray");
    }
    let shape_text = field("shape")?;
    let shape_text = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .context("cannot read the shape")?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().with_context(|| format!("bad shape entry `{s}`")))
        .collect::<Result<_>>()?;
    let (rows, dim) = match shape[..] {
        [dim] => (1, dim),
        [rows, dim] => (rows, dim),
        _ => bail!("shape {shape:?} is not supported: use (N, D) or (D,)"),
    };
    let data = &bytes[start + header_len..];
    let expected = rows
        .checked_mul(dim)
        .and_then(|n| n.checked_mul(width))
        .context("shape overflows")?;
    if data.len() != expected {
        bail!(
            "data has {} bytes, shape {shape:?} needs {expected}",
            data.len()
        );
    }
    let values: Vec<f32> = if width == 4 {
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        data.chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect()
    };
    Ok(values.chunks(dim.max(1)).map(<[f32]>::to_vec).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(data);
        out
    }

    #[test]
    fn reads_float32_matrices_and_float64_vectors() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            parse(&npy("<f4", "(2, 3)", &data)).unwrap(),
            vec![vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]]
        );
        let data: Vec<u8> = [0.5f64, -0.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            parse(&npy("<f8", "(2,)", &data)).unwrap(),
            vec![vec![0.5, -0.25]]
        );
    }

    #[test]
    fn refuses_what_it_cannot_read_with_the_reason() {
        assert!(parse(b"hello world")
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let err = parse(&npy("<i4", "(1,)", &[0; 4])).unwrap_err().to_string();
        assert!(err.contains("float32"), "{err}");
        let err = parse(&npy("<f4", "(2, 3)", &[0; 8]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs 24"), "{err}");
    }
}
