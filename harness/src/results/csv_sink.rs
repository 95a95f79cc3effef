//! Append-only CSV files of telemetry rows, flushed per row.
//!
//! [`CsvSink::create`] writes the header at once (from the row type's field names, so an
//! empty run still has a well-formed file); [`CsvSink::push`] encodes one row in memory and
//! hands it to the kernel with a single `write`, unbuffered. A crash of the process therefore
//! loses at most the row being written, which shows as a last line without its newline;
//! [`read_rows`] drops such a line and reports it. (Rows reach the disk on `sync()` /
//! [`CsvSink::finish`]; a power cut may lose the page cache, a process crash does not.)

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::ResultsError;

fn writer(has_headers: bool) -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new()
        .has_headers(has_headers)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new())
}

/// The header line of `T` (field names in declaration order, newline-terminated).
pub fn header_line<T: Serialize + Default>() -> Vec<u8> {
    let mut w = writer(true);
    w.serialize(T::default()).expect("a default row serialises");
    let bytes = w.into_inner().expect("in-memory writer");
    let end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |i| i + 1);
    bytes[..end].to_vec()
}

/// A CSV file of rows of type `T`.
pub struct CsvSink<T> {
    file: File,
    path: PathBuf,
    rows: u64,
    _row: PhantomData<fn(&T)>,
}

impl<T: Serialize + Default> CsvSink<T> {
    /// Create (truncate) `path` and write the header.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, ResultsError> {
        let path = path.as_ref().to_path_buf();
        let io = |error| ResultsError::Io {
            path: path.clone(),
            error,
        };
        let mut file = File::create(&path).map_err(io)?;
        file.write_all(&header_line::<T>()).map_err(io)?;
        Ok(Self {
            file,
            path,
            rows: 0,
            _row: PhantomData,
        })
    }

    /// Open an existing file for appending (its header must match `T`), or create it.
    pub fn append(path: impl AsRef<Path>) -> Result<Self, ResultsError> {
        let path = path.as_ref().to_path_buf();
        if !path.exists() {
            return Self::create(path);
        }
        let io = |error| ResultsError::Io {
            path: path.clone(),
            error,
        };
        let text = std::fs::read(&path).map_err(io)?;
        let header = header_line::<T>();
        if !text.starts_with(&header) {
            return Err(ResultsError::Invalid {
                path,
                reason: "header does not match the row type".into(),
            });
        }
        let rows = text.iter().filter(|&&b| b == b'\n').count() as u64 - 1;
        let file = OpenOptions::new().append(true).open(&path).map_err(io)?;
        Ok(Self {
            file,
            path,
            rows,
            _row: PhantomData,
        })
    }

    /// Write one row and hand it to the kernel before returning.
    pub fn push(&mut self, row: &T) -> Result<(), ResultsError> {
        let invalid = |reason: String| ResultsError::Invalid {
            path: self.path.clone(),
            reason,
        };
        let mut w = writer(false);
        w.serialize(row).map_err(|e| invalid(e.to_string()))?;
        let bytes = w.into_inner().map_err(|e| invalid(e.to_string()))?;
        self.file
            .write_all(&bytes)
            .map_err(|error| ResultsError::Io {
                path: self.path.clone(),
                error,
            })?;
        self.rows += 1;
        Ok(())
    }

    /// Rows written (for `append`, including those already in the file).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// fsync the file.
    pub fn sync(&self) -> Result<(), ResultsError> {
        self.file.sync_all().map_err(|error| ResultsError::Io {
            path: self.path.clone(),
            error,
        })
    }

    /// fsync and close.
    pub fn finish(self) -> Result<(), ResultsError> {
        self.sync()
    }
}

/// Rows of a CSV file read back, and what was dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows<T> {
    pub rows: Vec<T>,
    /// A last line without its newline (a crash mid-write) was dropped.
    pub dropped_partial_row: bool,
}

/// Read every complete row of `path`. A malformed complete row is an error naming its line.
pub fn read_rows<T: DeserializeOwned>(path: &Path) -> Result<Rows<T>, ResultsError> {
    let bytes = std::fs::read(path).map_err(|error| ResultsError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    parse_rows(path, &bytes)
}

pub(crate) fn parse_rows<T: DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
) -> Result<Rows<T>, ResultsError> {
    let (complete, dropped_partial_row) = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => (&bytes[..=i], i + 1 < bytes.len()),
        None => (&bytes[..0], !bytes.is_empty()),
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(complete);
    let mut rows = Vec::new();
    for (i, rec) in reader.deserialize::<T>().enumerate() {
        let row = rec.map_err(|e| ResultsError::Malformed {
            path: path.to_path_buf(),
            line: i + 2,
            reason: e.to_string().lines().next().unwrap_or("").to_string(),
        })?;
        rows.push(row);
    }
    Ok(Rows {
        rows,
        dropped_partial_row,
    })
}
