//! Work on the destination's files, on the blocking pool: in batches, so a
//! directory of a million small files costs a few thousand task
//! hand-offs, not a million, with two batches at a time (the work is disk
//! and CPU bound).

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};

use crate::RestoreError;

/// Files handed to one blocking task by [`per_file`].
pub(crate) const FILES_PER_TASK: usize = 512;

/// Runs `f` for every file index `0..n` on the blocking pool, two tasks at
/// a time of [`FILES_PER_TASK`] files each, and returns the results in
/// order: a directory of a million small files costs a few thousand task
/// hand-offs, not a million.
pub(crate) async fn per_file<T: Send + 'static>(
    n: usize,
    f: impl Fn(usize) -> Result<T, RestoreError> + Send + Sync + 'static,
) -> Result<Vec<T>, RestoreError> {
    per_batch(n, move |files| files.map(&f).collect()).await
}

/// [`per_file`] with the batch (a range of file indexes) handed to `f`
/// whole, which returns one result per file.
pub(crate) async fn per_batch<T: Send + 'static>(
    n: usize,
    f: impl Fn(std::ops::Range<usize>) -> Result<Vec<T>, RestoreError> + Send + Sync + 'static,
) -> Result<Vec<T>, RestoreError> {
    let f = Arc::new(f);
    let batches: Vec<Vec<T>> = futures::stream::iter((0..n).step_by(FILES_PER_TASK))
        .map(|start| {
            let f = f.clone();
            blocking(move || f(start..(start + FILES_PER_TASK).min(n)))
        })
        .buffered(2)
        .try_collect()
        .await?;
    Ok(batches.into_iter().flatten().collect())
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RestoreError> + Send + 'static,
) -> Result<T, RestoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task does not panic")
}
