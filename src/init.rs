//! Init-container mode: decide, without touching the network, whether the
//! destination already holds a complete and recent enough restore.

use std::path::Path;
use std::time::{Duration, SystemTime};

use qsync_core::ChainName;
use qsync_fetcher::dest::{read_marker, Marker, MARKER, PARTIAL};
use qsync_fetcher::root::Root;

/// The completion marker of `dest` when it is a finished restore of `chain`
/// written less than `max_age` ago (any age when `max_age` is `None`).
/// A restore under way (DEST locked by a running restore, or a partial
/// marker present, whatever it is) is never fresh. The marker is read
/// through the destination's bounded reader: a link, a FIFO or an
/// oversized file there is no marker.
pub fn still_fresh(dest: &Path, chain: &ChainName, max_age: Option<Duration>) -> Option<Marker> {
    let root = Root::open(dest).ok()??;
    if root.busy().unwrap_or(true) || !matches!(root.stat(PARTIAL), Ok(None)) {
        return None;
    }
    let m = read_marker(&root, MARKER).filter(|m| m.chain == chain.as_str())?;
    let Some(max_age) = max_age else { return Some(m) };
    let written = humantime::parse_rfc3339(&m.written_at).ok()?;
    let age = SystemTime::now().duration_since(written).unwrap_or_default();
    (age <= max_age).then_some(m)
}
