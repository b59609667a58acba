//! Errors of the perf.data reader: every one names where in the file parsing stopped.

use std::fmt;
use std::path::{Path, PathBuf};

/// A perf.data parse or read failure, at a file offset.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    /// The file the offset is in, once known (parsers over `&[u8]` leave it to the caller).
    pub file: Option<PathBuf>,
    /// Byte offset in `file` (or, inside zstd-compressed records, in the decompressed stream).
    pub offset: u64,
    pub kind: ErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("empty file")]
    Empty,
    #[error("not a perf.data file (magic {0:02x?})")]
    BadMagic(Vec<u8>),
    #[error("{what} truncated: needs {needed} bytes, the file has {available}")]
    Truncated {
        what: &'static str,
        needed: u64,
        available: u64,
    },
    #[error("{what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    #[error("zstd-compressed records: {0}")]
    Decompress(String),
}

impl Error {
    pub fn new(offset: u64, kind: ErrorKind) -> Self {
        Error {
            file: None,
            offset,
            kind,
        }
    }

    pub(crate) fn truncated(offset: u64, what: &'static str, needed: u64, available: u64) -> Self {
        Self::new(
            offset,
            ErrorKind::Truncated {
                what,
                needed,
                available,
            },
        )
    }

    pub(crate) fn invalid(offset: u64, what: &'static str, detail: impl Into<String>) -> Self {
        Self::new(
            offset,
            ErrorKind::Invalid {
                what,
                detail: detail.into(),
            },
        )
    }

    /// Names the file, unless an inner layer already did.
    pub fn in_file(mut self, file: &Path) -> Self {
        if self.file.is_none() {
            self.file = Some(file.to_path_buf());
        }
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        write!(f, "at offset {:#x}: {}", self.offset, self.kind)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
