//! How many chunks a restore fetches at once: chosen from what the mirrors
//! deliver, not fixed.
//!
//! A CDN edge or an S3 prefix limits each connection, so a restore from one
//! is as fast as the number of requests in flight; a fast local mirror
//! saturates the disk with a few, and more only cost memory. [`Pace`]
//! starts at [`START`] and doubles while each doubling raises the delivered
//! rate by at least [`GAIN`] (a slow start), then keeps the smaller limit
//! when a doubling did not pay, and tries one more request at a time while
//! that pays. Errors (timeouts, resets, 5xx) cut the limit by a quarter,
//! and growth resumes one step at a time. The limit
//! never exceeds `--concurrency`; memory bounds it separately (the caller
//! holds at most a byte budget of chunks in flight).

use std::time::{Duration, Instant};

/// Chunks in flight at the start.
pub(crate) const START: usize = 8;
/// The least a window must last to be measured.
const WINDOW: Duration = Duration::from_millis(300);
/// How much faster a larger limit must deliver to be kept.
const GAIN: f64 = 1.2;
/// The lowest limit after errors.
const FLOOR: usize = 2;

/// The limit on chunks in flight, and what it is learning from.
#[derive(Debug)]
pub(crate) struct Pace {
    limit: usize,
    ceiling: usize,
    /// Doubling while it pays (false once a doubling did not, or after errors).
    slow_start: bool,
    /// The rate of the last window at the previous limit, bytes per second.
    last_rate: f64,
    /// The window being measured: since when, bytes, completions and errors
    /// at its start.
    since: Instant,
    at_bytes: u64,
    at_done: u64,
    at_errors: u64,
    /// Highest limit used.
    peak: usize,
}

impl Pace {
    /// A pace that never allows more than `ceiling` chunks in flight.
    pub(crate) fn new(ceiling: usize, now: Instant) -> Self {
        let ceiling = ceiling.max(1);
        let limit = START.min(ceiling);
        Pace {
            limit,
            ceiling,
            slow_start: true,
            last_rate: 0.0,
            since: now,
            at_bytes: 0,
            at_done: 0,
            at_errors: 0,
            peak: limit,
        }
    }

    /// Chunks allowed in flight now.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// The highest limit so far.
    pub(crate) fn peak(&self) -> usize {
        self.peak
    }

    /// Takes in the totals so far (bytes delivered, chunks completed,
    /// failed attempts) and, once a window is long enough to tell, moves
    /// the limit.
    pub(crate) fn observe(&mut self, bytes: u64, done: u64, errors: u64, now: Instant) {
        let elapsed = now.duration_since(self.since);
        let errors_now = errors > self.at_errors;
        // A window must last long enough and see every slot complete about
        // once, or the rate is noise; an error is news at once.
        if !errors_now && (elapsed < WINDOW || done - self.at_done < self.limit as u64 / 2) {
            return;
        }
        let rate = (bytes - self.at_bytes) as f64 / elapsed.as_secs_f64().max(1e-3);
        let before = self.limit;
        // A doubling must pay GAIN; one more request at least half of what
        // it adds in proportion (noise hides less than that).
        let wanted = if self.slow_start {
            GAIN
        } else {
            1.0 + 0.5 / before as f64
        };
        if errors_now {
            self.limit = (self.limit - self.limit / 4).max(FLOOR).min(self.limit);
            self.slow_start = false;
        } else if rate >= self.last_rate * wanted {
            self.limit = if self.slow_start { before * 2 } else { before + 1 };
        } else if self.slow_start && before > START.min(self.ceiling) {
            // The last doubling bought too little: back to the smaller limit.
            self.limit = before / 2;
            self.slow_start = false;
        }
        self.limit = self.limit.clamp(1, self.ceiling);
        self.peak = self.peak.max(self.limit);
        if self.limit != before || errors_now {
            tracing::debug!(
                rate_mib_s = rate / 1048576.0,
                errors_now,
                "chunks in flight: {before} -> {}",
                self.limit
            );
        }
        // After errors the rate is learnt again; after a step back, the
        // larger limit's rate is what one more request must beat.
        self.last_rate = if errors_now { 0.0 } else { rate };
        self.since = now;
        self.at_bytes = bytes;
        self.at_done = done;
        self.at_errors = errors;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `pace` against a link that delivers `rate(limit)` MiB/s with
    /// 4 MiB chunks, for `secs` simulated seconds; returns the limit it
    /// settled on and the bytes delivered. `errors(t)` says whether an
    /// attempt failed in the 100 ms tick ending at `t` seconds.
    fn simulate(
        ceiling: usize,
        secs: f64,
        rate: impl Fn(usize) -> f64,
        errors: impl Fn(f64) -> bool,
    ) -> (usize, f64) {
        let start = Instant::now();
        let mut pace = Pace::new(ceiling, start);
        let (mut bytes, mut done, mut failed, mut t) = (0.0f64, 0.0f64, 0u64, 0.0);
        while t < secs {
            t += 0.1;
            let got = rate(pace.limit()) * 1048576.0 * 0.1;
            bytes += got;
            done += got / (4.0 * 1048576.0);
            failed += u64::from(errors(t));
            pace.observe(
                bytes as u64,
                done as u64,
                failed,
                start + Duration::from_secs_f64(t),
            );
        }
        (pace.limit(), bytes)
    }

    /// Each connection limited to 20 MiB/s, the client good for 400:
    /// the limit grows to where the link is full.
    #[test]
    fn a_per_connection_limited_mirror_gets_many_requests() {
        let (limit, _) = simulate(64, 10.0, |l| (l as f64 * 20.0).min(400.0), |_| false);
        assert!(limit >= 16, "{limit}");
    }

    /// A fast local mirror that the disk limits at 500 MiB/s from 4
    /// requests on: the limit stays small.
    #[test]
    fn a_fast_mirror_keeps_few_requests_in_flight() {
        let (limit, _) = simulate(64, 10.0, |l| (l as f64 * 125.0).min(500.0), |_| false);
        assert!(limit <= 8, "{limit}");
    }

    /// Errors cut the limit; it grows back once they stop. `--concurrency`
    /// stays an upper bound.
    #[test]
    fn errors_cut_the_limit_and_the_ceiling_holds() {
        let link = |l: usize| (l as f64 * 20.0).min(800.0);
        let (limit, _) = simulate(64, 4.0, link, |t| t > 2.0);
        assert!(limit <= 4, "{limit}");
        let (limit, _) = simulate(64, 12.0, link, |t| (2.0..3.0).contains(&t));
        assert!(limit > 4, "did not grow back: {limit}");
        assert!(simulate(6, 10.0, link, |_| false).0 <= 6);
    }
}
