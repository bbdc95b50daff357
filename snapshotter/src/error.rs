//! Why a snapshot run failed. Nothing a failed run wrote is reachable from
//! the pointer, so every error leaves the previous snapshot standing.

use std::path::PathBuf;

use qsync_core::FormatError;
use qsync_store::signed::SignedReadError;
use qsync_store::StoreError;
use serde::Serialize;

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
    Thaw(crate::freeze::HookError),
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

impl SnapshotError {
    /// `e`, met reading back a pointer or catalog this publisher is about
    /// to replace (`so_far` says what the run has written by then): when
    /// it is signed by a key the publisher does not sign with, say how to
    /// change keys without a gap instead of only that the signature was
    /// rejected. Any other bad signature (a forged or damaged object, a
    /// missing signature) is reported as it is.
    pub(crate) fn reading_own(
        e: SignedReadError,
        signer: &qsync_core::sign::SigningKeys,
        so_far: &str,
    ) -> SnapshotError {
        match e {
            SignedReadError::Format(FormatError::UntrustedKey { what, reason }) => {
                SnapshotError::Format(FormatError::Invalid(format!(
                    "{what} is not signed by a key this publisher signs with ({}): {reason}. {so_far} To move to a new key without a gap, sign with the old and the new key together for a while (--secret-key OLD --secret-key NEW, or secret-key = [OLD, NEW] in the agent configuration; docs/deploy.md, \"Rotate the signing key\")",
                    signer.describe()
                )))
            }
            e => e.into(),
        }
    }

    /// The cycle stage this error fails, from its kind alone: the source
    /// is `read`, a store (or its lease, or a race on its pointer) is
    /// `upload`, the post hook is `thaw`.
    pub fn stage(&self) -> Stage {
        match self {
            SnapshotError::Source { .. }
            | SnapshotError::FileChanged { .. }
            | SnapshotError::Unsupported { .. } => Stage::Read,
            SnapshotError::PointerRace { .. }
            | SnapshotError::Lease(_)
            | SnapshotError::Store(_)
            | SnapshotError::Format(_) => Stage::Upload,
            SnapshotError::Cancelled => Stage::Cancelled,
            SnapshotError::Thaw(_) => Stage::Thaw,
        }
    }

    /// The process exit code (docs/operations.md, "Exit codes"): 3 when a
    /// store's signed objects break a format rule (another key, a bad
    /// signature), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            SnapshotError::Format(_) => 3,
            _ => 1,
        }
    }
}

/// Where a cycle failed; the `stage` label of the failure metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Taking the store leases.
    Lock,
    /// The pre hook.
    Freeze,
    /// Asking for the head block.
    Metadata,
    /// Hard-linking and copying into staging.
    Stage,
    /// Reading the source (including a file changing while read).
    Read,
    /// Uploading to or committing in a store.
    Upload,
    /// The post hook.
    Thaw,
    /// Retention and garbage collection.
    Gc,
    /// Told to stop.
    Cancelled,
}

impl Stage {
    /// Every stage, for metrics that list zero counts too.
    pub const ALL: [Stage; 9] = [
        Stage::Lock,
        Stage::Freeze,
        Stage::Metadata,
        Stage::Stage,
        Stage::Read,
        Stage::Upload,
        Stage::Thaw,
        Stage::Gc,
        Stage::Cancelled,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Lock => "lock",
            Stage::Freeze => "freeze",
            Stage::Metadata => "metadata",
            Stage::Stage => "stage",
            Stage::Read => "read",
            Stage::Upload => "upload",
            Stage::Thaw => "thaw",
            Stage::Gc => "gc",
            Stage::Cancelled => "cancelled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_outage_while_uploading_fails_the_upload_stage_not_read() {
        let outage = SnapshotError::Store(StoreError::Transport {
            location: "s3://b/p/".into(),
            key: "chunks/ab/cd".into(),
            source: "connection refused".into(),
        });
        assert_eq!(outage.stage(), Stage::Upload);
        let changed = SnapshotError::FileChanged {
            path: "/data/x".into(),
            what: "size".into(),
        };
        assert_eq!(changed.stage(), Stage::Read);
        let post = crate::freeze::HookError::Failed {
            what: "post",
            command: "systemctl start geth".into(),
            status: "exit status: 1".into(),
            tail: String::new(),
        };
        assert_eq!(SnapshotError::Thaw(post).stage(), Stage::Thaw);
        assert_eq!(SnapshotError::Cancelled.stage(), Stage::Cancelled);
    }
}
