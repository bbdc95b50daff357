//! Why a restore, verify or listing failed, and the exit code each maps to.

use std::path::PathBuf;

use qsync_core::FormatError;
use qsync_store::signed::SignedReadError;
use qsync_store::StoreError;

/// A failed fetcher operation. A failed restore never leaves a completion marker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// No mirror has a snapshot of the chain.
    #[error("no snapshot of chain {chain} in {locations}; check --chain and --from")]
    NoSnapshot {
        /// Chain asked for.
        chain: String,
        /// Mirrors consulted.
        locations: String,
    },
    /// Every mirror was demoted for serving corrupt data.
    #[error("no mirror left to fetch {chunk}: every mirror ({locations}) served corrupt data this run; check the mirrors with `qsync verify`")]
    NoMirror {
        /// The chunk wanted.
        chunk: String,
        /// Mirrors configured.
        locations: String,
    },
    /// Data failed a signature, digest, freshness, rollback or safety rule.
    #[error(transparent)]
    Refused(#[from] FormatError),
    /// A store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The destination cannot be used as asked.
    #[error("destination {path}: {reason}")]
    Dest {
        /// The destination.
        path: PathBuf,
        /// Why and what to do.
        reason: String,
    },
    /// Local I/O failed.
    #[error("{path}: {source}{}", no_space_hint(source))]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The operator's `--verify-cmd` rejected the restored data.
    #[error("--verify-cmd {command:?} failed ({status}){stderr}; the destination was left without a completion marker")]
    VerifyCmd {
        /// The command.
        command: String,
        /// How it ended.
        status: String,
        /// The end of its stderr, prefixed with ": " when not empty.
        stderr: String,
    },
    /// `qsync verify --dest` found the destination is not its snapshot.
    #[error("{path} is not snapshot {version} of chain {chain}: {missing} missing, {changed} changed, {extra} extra ({list}); to repair it, stop the node and restore into it again (only what differs is fetched; a restore rewinds whatever the node wrote since)")]
    DestDiffers {
        /// The destination.
        path: PathBuf,
        /// Chain.
        chain: String,
        /// Snapshot version audited against.
        version: u64,
        /// Files absent.
        missing: usize,
        /// Files that differ.
        changed: usize,
        /// Entries the snapshot lacks.
        extra: usize,
        /// The first few.
        list: String,
    },
    /// `qsync verify` found missing or bad objects.
    #[error("{count} object(s) of chain {chain} are missing or corrupt in {location}: {list}")]
    BadObjects {
        /// Chain.
        chain: String,
        /// Store.
        location: String,
        /// How many.
        count: usize,
        /// The first few, with reasons.
        list: String,
    },
}

impl RestoreError {
    /// Process exit code for this error (documented in docs/operations.md).
    pub fn exit_code(&self) -> i32 {
        match self {
            RestoreError::Refused(_) | RestoreError::BadObjects { .. } | RestoreError::NoMirror { .. } => 3,
            RestoreError::Dest { .. } => 4,
            RestoreError::VerifyCmd { .. } => 6,
            RestoreError::DestDiffers { .. } => 7,
            RestoreError::NoSnapshot { .. } => 5,
            RestoreError::Store(_) | RestoreError::Io { .. } => 1,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RestoreError {
        let path = path.into();
        move |source| RestoreError::Io { path, source }
    }
}

fn no_space_hint(e: &std::io::Error) -> &'static str {
    if e.raw_os_error() == Some(28) {
        "; the destination filesystem is full: free space or pick another --dest, then run again (what was written is kept)"
    } else {
        ""
    }
}

impl From<SignedReadError> for RestoreError {
    fn from(e: SignedReadError) -> Self {
        match e {
            SignedReadError::Store(s) => RestoreError::Store(s),
            SignedReadError::Format(f) => RestoreError::Refused(f),
        }
    }
}
