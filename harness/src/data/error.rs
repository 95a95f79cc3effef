//! The one error type of the data module. Every message is a single line that names the
//! config field (`data.<field>`), the offending value and what is allowed.

use std::path::Path;

/// A data error: bad configuration, unreadable or malformed input, or a call out of range.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A config value, or a file named by one, is not acceptable.
    #[error("data.{field}: {message}")]
    Invalid {
        /// The config field, without the `data.` prefix (`path`, `vocab_size`, ...).
        field: &'static str,
        /// What is wrong and what is allowed, one line.
        message: String,
    },
    /// A file or directory named by the config could not be read.
    #[error("data.{field}: cannot read {path}: {source}")]
    Io {
        /// The config field naming the file.
        field: &'static str,
        /// The path, as displayed.
        path: String,
        /// The operating-system error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML text of a data config does not parse.
    #[error("data config: {0}")]
    Parse(String),
    /// A call with arguments out of range (a site, domain or length the dataset does not have).
    #[error("{0}")]
    Usage(String),
}

impl DataError {
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> DataError {
        DataError::Invalid {
            field,
            message: message.into(),
        }
    }

    pub(crate) fn io(field: &'static str, path: &Path, source: std::io::Error) -> DataError {
        DataError::Io {
            field,
            path: path.display().to_string(),
            source,
        }
    }
}
