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
    let mut all = Vec::with_capacity(n);
    in_order(n, f, |_, t| all.push(t)).await?;
    Ok(all)
}

/// [`per_batch`] with each result handed to `take` (with its file's index,
/// in order) as its batch completes, so a caller that folds them holds no
/// table of a million results.
pub(crate) async fn in_order<T: Send + 'static>(
    n: usize,
    f: impl Fn(std::ops::Range<usize>) -> Result<Vec<T>, RestoreError> + Send + Sync + 'static,
    mut take: impl FnMut(usize, T),
) -> Result<(), RestoreError> {
    let f = Arc::new(f);
    let mut batches = futures::stream::iter((0..n).step_by(FILES_PER_TASK))
        .map(|start| {
            let f = f.clone();
            blocking(move || Ok((start, f(start..(start + FILES_PER_TASK).min(n))?)))
        })
        .buffered(2);
    while let Some((start, results)) = batches.try_next().await? {
        for (k, t) in results.into_iter().enumerate() {
            take(start + k, t);
        }
    }
    Ok(())
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RestoreError> + Send + 'static,
) -> Result<T, RestoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task does not panic")
}
