//! Planning a restore: what the destination already holds, piece by
//! piece, and what must still be fetched and where it goes.
//!
//! Files layout found absent need no look. For the others, in this order:
//! the resume journal of this very manifest (nothing read, while the
//! file's stat is the one journaled), the index of the last completed
//! restore (nothing read, while path, digest and stat match), else the
//! file's present bytes are hashed, a whole chunk against its own digest
//! and a packed file's part of a chunk against the file's digest.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use qsync_core::manifest::Manifest;
use qsync_core::records::{FileStat, JournalState};
use qsync_core::Digest;

use crate::batch::in_order;
use crate::dest::hash_existing;
use crate::journal::{Index, Record};
use crate::root::Root;
use crate::write::Slot;
use crate::RestoreError;

/// What must still be written.
pub(crate) struct Plan {
    /// Each missing chunk once, with its size and every place it goes.
    pub(crate) needed: HashMap<Digest, (u64, Vec<Slot>)>,
    /// Bytes already in place.
    pub(crate) reused: u64,
    /// How much the files must grow on disk.
    pub(crate) growth: u64,
    /// Files this run changes (written, truncated or created).
    pub(crate) touched: Vec<bool>,
    /// Files that were there (a regular file) when planning looked.
    pub(crate) existed: Vec<bool>,
    /// Files this run writes entirely: their digests are assembled as the
    /// chunks land, so the seal need not read them back.
    pub(crate) whole: Vec<bool>,
    /// What planning verified by reading, with the stat it was read at,
    /// for the journal.
    pub(crate) verified: Vec<Record>,
}

/// How planning learned what a file holds, piece by piece
/// ([`qsync_core::pieces`]). Made for a batch of files at a time and folded
/// into the [`Plan`] at once; the rare large variants stay boxed, so a
/// batch of the common ones is 16 bytes a file, not 72.
enum Known {
    /// Every piece, from the journal or the index: nothing read.
    Trusted,
    /// These pieces, from the journal of this very manifest: nothing read.
    /// Boxed for the enum's size (48 bytes a file unboxed), not the set's.
    #[allow(clippy::box_collection)]
    Journaled(Box<HashSet<u32>>),
    /// These pieces, by hashing the file's current contents (with the
    /// file's stat as it was read).
    Hashed(Box<(Vec<bool>, Option<FileStat>)>),
    /// Nothing: layout found no file there.
    Absent,
}

/// Works out what the destination already holds (from the journal of this
/// manifest, the index of the last completed restore, or by hashing) and
/// lists what is missing. `done` is `None` under `--verify-existing`.
/// Journaled chunks count only while the file's stat is the last one the
/// journal recorded for it: a file changed since, even in place with the
/// same size, is hashed.
pub(crate) async fn plan(
    manifest: &Arc<Manifest>,
    root: &Arc<Root>,
    done: Option<Arc<JournalState>>,
    index: Arc<Index>,
    present: Arc<Vec<bool>>,
) -> Result<Plan, RestoreError> {
    let (m, root) = (manifest.clone(), root.clone());
    let n = manifest.files.len();
    let look = move |i: usize| -> Result<(Known, Option<u64>), RestoreError> {
        let f = &m.files[i];
        if !present[i] {
            // Layout found nothing there: nothing to look at.
            return Ok((Known::Absent, None));
        }
        let now = root
            .stat(&f.path)
            .map_err(RestoreError::io(root.display(&f.path)))?
            .filter(|m| m.is_file());
        let have = now.as_ref().map(|m| m.len());
        let still = |j: &JournalState| {
            now.as_ref()
                .is_some_and(|m| j.stats.get(&(i as u32)) == Some(&FileStat::of(m)))
        };
        let journaled = done
            .as_deref()
            .filter(|j| still(j))
            .and_then(|j| j.done.get(&(i as u32)));
        let known = match journaled {
            Some(None) => Known::Trusted,
            _ if done.is_some()
                && now
                    .as_ref()
                    .is_some_and(|m| index.unchanged_stat(i, f, FileStat::of(m))) =>
            {
                Known::Trusted
            }
            Some(Some(set)) => Known::Journaled(Box::new(set.clone())),
            _ => {
                let (ok, meta) = hash_existing(&root, f, &m.pieces(i))?;
                Known::Hashed(Box::new((ok, meta.as_ref().map(FileStat::of))))
            }
        };
        Ok((known, have))
    };
    let mut plan = Plan {
        needed: HashMap::new(),
        reused: 0,
        growth: 0,
        existed: vec![false; n],
        touched: vec![false; n],
        whole: vec![false; n],
        verified: Vec::new(),
    };
    // Each file's look is folded in as its batch completes: a million
    // files' looks (32 bytes each) are never held at once.
    in_order(
        n,
        move |files| files.map(&look).collect(),
        |i, (known, have)| plan.add(manifest, i, known, have),
    )
    .await?;
    Ok(plan)
}

impl Plan {
    /// Adds what planning found of file `i`.
    fn add(&mut self, manifest: &Manifest, i: usize, known: Known, have: Option<u64>) {
        let f = &manifest.files[i];
        self.existed[i] = have.is_some();
        let ok = |c: usize| match &known {
            Known::Trusted => true,
            Known::Journaled(set) => set.contains(&(c as u32)),
            Known::Hashed(h) => h.0[c],
            Known::Absent => false,
        };
        self.growth += f.size.saturating_sub(have.unwrap_or(0));
        self.touched[i] = have != Some(f.size);
        let pieces = manifest.pieces(i);
        let mut good = Vec::new();
        for (c, p) in pieces.iter().enumerate() {
            if ok(c) {
                self.reused += p.len;
                good.push(c as u32);
            } else {
                self.touched[i] = true;
                let entry = self
                    .needed
                    .entry(p.chunk.blake3)
                    .or_insert((p.chunk.size, Vec::new()));
                entry.1.push(Slot::of(i, c, p));
            }
        }
        self.whole[i] = good.is_empty() && !pieces.is_empty();
        // What hashing proved goes into the journal; a file that was not
        // there proved nothing.
        if let Known::Hashed(h) = known {
            let (_, Some(st)) = *h else { return };
            let all = good.len() == pieces.len();
            self.verified.push((i as u32, (!all).then_some(good), Some(st)));
        }
    }
}

#[cfg(test)]
mod tests {
    /// A batch of these is held while planning (once a million files',
    /// 72 MB more before the rare large cases were boxed).
    #[test]
    fn what_planning_knows_of_a_file_is_small() {
        assert!(std::mem::size_of::<super::Known>() <= 16);
    }
}
