//! Why a snapshot run failed. Nothing a failed run wrote is reachable from
//! the pointer, so every error leaves the previous snapshot standing.

use std::path::PathBuf;

use qsync_core::FormatError;
use qsync_store::signed::SignedReadError;
use qsync_store::StoreError;

/// A failed snapshot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The source directory could not be read.
    #[error("reading {path}: {source}")]
    Source {
        /// File or directory.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A file changed while it was read.
    #[error("{path} changed while it was being read ({what}); the snapshot would be inconsistent, so nothing was published. Stop the node or point --source at a checkpoint, then run again")]
    FileChanged {
        /// The file.
        path: PathBuf,
        /// What differed.
        what: String,
    },
    /// An entry qsync does not publish.
    #[error("{path}: {what}")]
    Unsupported {
        /// The entry.
        path: PathBuf,
        /// What it is and what to do.
        what: String,
    },
    /// Another publisher moved the pointer during this run.
    #[error("the pointer {key} in {location} changed while this snapshot was being published (another publisher for the same chain?); nothing was overwritten. Run one publisher per chain and store, then retry")]
    PointerRace {
        /// Store location.
        location: String,
        /// Pointer key.
        key: String,
    },
    /// The run was told to stop (SIGTERM) before any pointer moved.
    #[error("stopped before publishing: nothing was written that a reader can see")]
    Cancelled,
    /// The node could not be thawed (the post hook failed) after reading;
    /// no pointer was moved.
    #[error("{0}; no pointer was moved")]
    Thaw(String),
    /// Another agent holds the store's lease.
    #[error(transparent)]
    Lease(#[from] crate::lease::LeaseError),
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A format rule was broken (for example the pointer is signed by another key).
    #[error(transparent)]
    Format(#[from] FormatError),
}

impl From<SignedReadError> for SnapshotError {
    fn from(e: SignedReadError) -> Self {
        match e {
            SignedReadError::Store(s) => SnapshotError::Store(s),
            SignedReadError::Format(f) => SnapshotError::Format(f),
        }
    }
}
