//! A nanoGPT-style token file: a flat array of uint16 little-endian token ids, with the
//! vocabulary size given in the config (`data.vocab_size`, 1..=65536).
//!
//! The file is read once at open, in chunks of [`CHUNK_BYTES`], and every token is checked
//! against the vocabulary there, so training never meets a bad id. Held-out data: the whole
//! `data.val_path` file if given, else the last round(n·`eval_fraction`) tokens. One domain,
//! named after the file stem. No entropy floor is known (`None`).
//!
//! Errors (one line each, naming the field): a missing file; a truncated file (odd byte
//! length, or a part with fewer than seq_len + 1 tokens); a token ≥ vocab_size, with its
//! value, token index and byte offset.

use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::path::Path;

use super::error::DataError;
use super::windows::{train_len_for, SplitTokens, Tokens};

/// Bytes read per chunk (even, so a chunk holds whole tokens).
pub const CHUNK_BYTES: usize = 1 << 20;

/// Reads and validates a token file (`field` is the config field naming it).
pub(crate) fn read_tokens(
    field: &'static str,
    path: &Path,
    vocab_size: usize,
) -> Result<Vec<u16>, DataError> {
    let meta = match fs::metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(DataError::invalid(
                field,
                format!(
                    "file not found: {} (expected uint16 little-endian tokens)",
                    path.display()
                ),
            ))
        }
        Err(e) => return Err(DataError::io(field, path, e)),
        Ok(m) => m,
    };
    if !meta.is_file() {
        return Err(DataError::invalid(
            field,
            format!(
                "{} is not a regular file (expected uint16 little-endian tokens)",
                path.display()
            ),
        ));
    }
    let n_bytes = meta.len();
    if n_bytes % 2 != 0 {
        return Err(DataError::invalid(
            field,
            format!(
                "{} is truncated: {n_bytes} bytes is an odd length, a token file holds 2-byte uint16 tokens",
                path.display()
            ),
        ));
    }
    let n_tokens = usize::try_from(n_bytes / 2).map_err(|_| {
        DataError::invalid(
            field,
            format!(
                "{} is too large for this machine ({n_bytes} bytes)",
                path.display()
            ),
        )
    })?;
    let mut file = File::open(path).map_err(|e| DataError::io(field, path, e))?;
    let mut tokens = Vec::with_capacity(n_tokens);
    let mut buf = vec![0u8; CHUNK_BYTES.min(n_bytes as usize).max(2)];
    let mut remaining = n_bytes as usize;
    while remaining > 0 {
        let chunk = &mut buf[..CHUNK_BYTES.min(remaining)];
        file.read_exact(chunk)
            .map_err(|e| DataError::io(field, path, e))?;
        for pair in chunk.chunks_exact(2) {
            let t = u16::from_le_bytes([pair[0], pair[1]]);
            if t as usize >= vocab_size {
                let index = tokens.len();
                return Err(DataError::invalid(
                    field,
                    format!(
                        "{}: token {t} at index {index} (byte offset {}) is >= data.vocab_size = {vocab_size}; \
                         allowed 0..={}",
                        path.display(),
                        2 * index,
                        vocab_size - 1
                    ),
                ));
            }
            tokens.push(t);
        }
        remaining -= chunk.len();
    }
    Ok(tokens)
}

/// Opens the token file (and its val file) and splits it (see the module doc).
/// Returns the domain name and the split tokens.
pub(crate) fn load(
    path: &Path,
    val_path: Option<&Path>,
    vocab_size: usize,
    eval_fraction: f64,
    seq_len: usize,
) -> Result<(String, SplitTokens), DataError> {
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tokens".to_string());
    let mut tokens = read_tokens("path", path, vocab_size)?;
    let need = seq_len + 1;
    let split = match val_path {
        Some(vp) => {
            let val = read_tokens("val_path", vp, vocab_size)?;
            if tokens.len() < need {
                return Err(DataError::invalid(
                    "path",
                    format!(
                        "{} is truncated: {} tokens, fewer than seq_len + 1 = {need}",
                        path.display(),
                        tokens.len()
                    ),
                ));
            }
            if val.len() < need {
                return Err(DataError::invalid(
                    "val_path",
                    format!(
                        "{} is truncated: {} tokens, fewer than seq_len + 1 = {need}",
                        vp.display(),
                        val.len()
                    ),
                ));
            }
            let train_len = tokens.len();
            tokens.extend_from_slice(&val);
            train_len
        }
        None => {
            let n = tokens.len();
            if n < 2 * need {
                return Err(DataError::invalid(
                    "path",
                    format!(
                        "{} is truncated: {n} tokens, fewer than 2·(seq_len + 1) = {} needed for one training and \
                         one held-out sequence",
                        path.display(),
                        2 * need
                    ),
                ));
            }
            train_len_for(n, eval_fraction)
        }
    };
    let what = format!("{} ({} tokens)", path.display(), tokens.len());
    let tokens = SplitTokens::new(Tokens::U16(tokens), split, seq_len, "path", &what)?;
    Ok((name, tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_tokens(path: &Path, toks: &[u16]) {
        let bytes: Vec<u8> = toks.iter().flat_map(|t| t.to_le_bytes()).collect();
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn good_file_round_trips_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("train.bin");
        // More than one chunk, every value, little-endian.
        let toks: Vec<u16> = (0..(CHUNK_BYTES / 2 + 1000))
            .map(|i| (i * 7919 % 65536) as u16)
            .collect();
        write_tokens(&p, &toks);
        assert_eq!(read_tokens("path", &p, 65536).unwrap(), toks);
        let (name, split) = load(&p, None, 65536, 0.1, 16).unwrap();
        assert_eq!(name, "train");
        assert_eq!(split.train_len() + split.eval_len(), toks.len());
        assert_eq!(split.eval_len(), (toks.len() as f64 * 0.1).round() as usize);
        // Byte order: 0x0102 is stored as [0x02, 0x01].
        fs::write(&p, [0x02u8, 0x01]).unwrap();
        assert_eq!(read_tokens("path", &p, 65536).unwrap(), vec![0x0102]);
    }

    #[test]
    fn every_bad_input_gives_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.bin");
        let missing = dir.path().join("missing.bin");
        let e = load(&missing, None, 256, 0.1, 4).unwrap_err().to_string();
        assert!(
            e.starts_with("data.path: file not found:") && e.contains("missing.bin"),
            "{e}"
        );

        fs::write(&p, [1u8, 0, 2]).unwrap();
        let e = load(&p, None, 256, 0.1, 4).unwrap_err().to_string();
        assert!(
            e.starts_with("data.path:") && e.contains("3 bytes is an odd length"),
            "{e}"
        );

        write_tokens(&p, &[1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let e = load(&p, None, 256, 0.1, 4).unwrap_err().to_string();
        assert!(
            e.contains("9 tokens, fewer than 2·(seq_len + 1) = 10"),
            "{e}"
        );

        let mut toks = vec![5u16; 64];
        toks[37] = 300;
        write_tokens(&p, &toks);
        let e = load(&p, None, 256, 0.1, 4).unwrap_err().to_string();
        assert!(
            e.contains("token 300 at index 37 (byte offset 74) is >= data.vocab_size = 256; allowed 0..=255"),
            "{e}"
        );
        assert!(!e.contains('\n'));

        // Val file: missing, and too short.
        write_tokens(&p, &[1; 64]);
        let e = load(&p, Some(&missing), 256, 0.1, 4)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("data.val_path: file not found:"), "{e}");
        let v = dir.path().join("v.bin");
        write_tokens(&v, &[1; 4]);
        let e = load(&p, Some(&v), 256, 0.1, 4).unwrap_err().to_string();
        assert!(
            e.starts_with("data.val_path:") && e.contains("4 tokens, fewer than seq_len + 1 = 5"),
            "{e}"
        );
        write_tokens(&v, &[1, 2, 300, 4, 5]);
        let e = load(&p, Some(&v), 256, 0.1, 4).unwrap_err().to_string();
        assert!(
            e.starts_with("data.val_path:") && e.contains("token 300 at index 2"),
            "{e}"
        );
        // A directory is not a token file.
        let e = load(dir.path(), None, 256, 0.1, 4).unwrap_err().to_string();
        assert!(e.contains("is not a regular file"), "{e}");
    }

    #[test]
    fn val_file_is_the_held_out_part() {
        let dir = tempfile::tempdir().unwrap();
        let (p, v) = (dir.path().join("train.bin"), dir.path().join("val.bin"));
        write_tokens(&p, &(0..20).collect::<Vec<u16>>());
        write_tokens(&v, &(100..110).collect::<Vec<u16>>());
        let (_, s) = load(&p, Some(&v), 200, 0.1, 4).unwrap();
        assert_eq!((s.train_len(), s.eval_len()), (20, 10));
        let mut out = Vec::new();
        s.eval_window(0, 2, 5, &mut out);
        s.eval_window(1, 2, 5, &mut out);
        assert_eq!(out, vec![100, 101, 102, 103, 104, 105, 106, 107, 108, 109]);
    }
}
