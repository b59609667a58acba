//! Debug information: finding the binaries of a recording the way perf finds them, and reading their
//! symbols, executable segments, code bytes, line tables and inline chains.
//!
//! This module stands alone: it knows nothing of perf.data or Intel PT. Callers pass plain data (the
//! recorded path and build-id of a mapping) and get back a [`Binary`]. Every address in this API is an
//! ELF virtual address, as in the file's program headers and symbol table; a caller holding a file
//! offset (perf maps an IP through the MMAP2 `pgoff` to one) converts it with
//! [`Binary::file_offset_to_vaddr`].
//!
//! - [`SearchPaths`] says where to look (build-id caches, `--symfs`, the global debug directory) and
//!   [`SearchPaths::locate`] finds a binary, or says by name every place it tried.
//! - [`Binary`] is a loaded ELF file, with its separate debug file when it has one; DWARF is parsed on
//!   the first query that needs it.
//! - [`BinaryCache`] loads each binary once and shares it across threads.

mod binary;
mod build_id;
mod cache;
mod kernel;
mod locate;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use binary::{Binary, Frame, LineRow, Segment, Symbol};
pub use build_id::{BuildId, ParseBuildIdError};
pub use cache::BinaryCache;
pub use kernel::{vmlinux_text, Kallsyms, Kcore, KcoreSegment, KernelSymbol};
pub use locate::{DebugLink, Located, NotFound, Origin, Rejection, SearchPaths, Tried};

/// An error of this module. Each names the file it is about.
///
/// `Clone` so that [`BinaryCache`] can hand the same failure to every caller that asks for a binary.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The file could not be opened, read or mapped.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: Arc<io::Error>,
    },
    /// The file is not an ELF file the `object` crate can parse (or is empty).
    #[error("{}: not a readable ELF file: {reason}", path.display())]
    NotElf {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The DWARF of the file is malformed.
    #[error("{}: bad DWARF: {reason}", path.display())]
    Dwarf {
        /// The file holding the DWARF (the separate debug file when there is one).
        path: PathBuf,
        /// What gimli said.
        reason: String,
    },
    /// The binary is nowhere it was looked for.
    #[error(transparent)]
    NotFound(#[from] NotFound),
}

impl Error {
    fn io(path: &Path, source: io::Error) -> Error {
        Error::Io {
            path: path.to_owned(),
            source: Arc::new(source),
        }
    }

    fn not_elf(path: &Path, reason: impl ToString) -> Error {
        Error::NotElf {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// Maps a whole file read-only. An empty file is reported as not ELF (mapping it would fail).
fn map_file(path: &Path) -> Result<memmap2::Mmap, Error> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len == 0 {
        return Err(Error::not_elf(path, "empty file"));
    }
    // SAFETY: the mapping is read-only and private to this process. It stays valid while the
    // `Mmap` lives even if the file is unlinked (a build-id cache being pruned); a process that
    // truncates or rewrites a binary in place while we read it is outside what any mmap-based
    // tool (perf included) can defend against, and such files are not meant to change.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}
