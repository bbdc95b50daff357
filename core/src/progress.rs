//! A progress sink the pipelines report to; the binary draws it (or not).

/// Receives byte counts as a pipeline advances. Implementations must be cheap:
/// `advance` is called once per chunk.
pub trait Progress: Send + Sync {
    /// A stage with `total` bytes of work starts.
    fn start(&self, stage: &str, total: u64);
    /// `bytes` more bytes of the current stage are done.
    fn advance(&self, bytes: u64);
    /// The current stage is over.
    fn finish(&self);
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}
