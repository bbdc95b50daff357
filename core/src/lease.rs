//! The body of a store lease (`locks/publish/<chain>.json`, `locks/gc.json`)
//! and the rules for reading one: when it is live, and when a holder may be
//! declared dead before its lease lapses.
//!
//! A lease is unsigned and written by whoever can write the store, so it is
//! parsed as untrusted bytes ([`LeaseBody::parse`], pure, fuzzable).
//! Taking, renewing and releasing leases in a store lives in
//! `qsync_snapshotter::lease`; this module only judges a body.

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// Largest lease body a reader accepts.
pub const MAX_BYTES: u64 = 64 << 10;

/// Which running process on which machine holds a lease. Hostnames are not
/// unique (containers, cloned VMs, two pods of one StatefulSet on
/// different nodes), so a holder is identified by the kernel's boot id and
/// its pid namespace, and the process by its pid and start time (a pid is
/// reused; a pid with the same start time is the same process).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Machine {
    /// `/proc/sys/kernel/random/boot_id`: new on every boot of every machine.
    pub boot_id: String,
    /// `readlink /proc/self/ns/pid`, e.g. `pid:[4026531836]`.
    pub pid_ns: String,
    /// The holder's process id in that namespace.
    pub pid: u32,
    /// Its start time, field 22 of `/proc/<pid>/stat` (clock ticks since boot).
    pub start_time: u64,
}

/// The body of a lease object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LeaseBody {
    /// Who holds it, for people: host, process and a random tag. Also what
    /// a holder compares to know the lease is still its own.
    pub holder: String,
    /// What for.
    pub purpose: String,
    /// When it lapses unless renewed.
    pub expires_at: Timestamp,
    /// Where the holder runs; absent in leases written before it was
    /// recorded, which are then only taken over once they lapse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
}

impl LeaseBody {
    /// The lease in `bytes`, or `None` when they are not one (a reader
    /// treats that as no lease: whoever can write the store can delete it).
    pub fn parse(bytes: &[u8]) -> Option<LeaseBody> {
        if bytes.len() as u64 > MAX_BYTES {
            return None;
        }
        serde_json::from_slice(bytes).ok()
    }

    /// Whether the lease has not lapsed at `now`.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.expires_at > now
    }

    /// Whether this (live) lease may be taken over at once by a process
    /// running as `me`: only when its holder ran on this very machine
    /// (same boot id and pid namespace), is another process than `me`, and
    /// that pid no longer runs with the recorded start time.
    /// `start_time_of(pid)` is the start time of the process now running as
    /// `pid`, `None` when none runs.
    pub fn abandoned_for(&self, me: &Machine, start_time_of: impl Fn(u32) -> Option<u64>) -> bool {
        let Some(m) = &self.machine else {
            return false;
        };
        m.boot_id == me.boot_id
            && m.pid_ns == me.pid_ns
            && m.pid != me.pid
            && start_time_of(m.pid) != Some(m.start_time)
    }
}

/// The start time (field 22) in the text of a `/proc/<pid>/stat` file. The
/// command name (field 2) is in parentheses and may itself hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn stat_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name come field 3 (state) onwards; field 22 is the 20th.
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Machine {
        Machine {
            boot_id: "b-1".into(),
            pid_ns: "pid:[4026531836]".into(),
            pid: 100,
            start_time: 5_000,
        }
    }

    fn lease(machine: Option<Machine>) -> LeaseBody {
        LeaseBody {
            holder: "node-0:200:00000000".into(),
            purpose: "publish eth".into(),
            expires_at: Timestamp(2_000_000_000),
            machine,
        }
    }

    #[test]
    fn takes_over_only_a_dead_holder_on_this_machine() {
        let other = Machine {
            pid: 200,
            start_time: 7_000,
            ..me()
        };
        let gone = |_| None;
        let reused = |_| Some(9_999);
        let running = |_| Some(7_000);
        assert!(lease(Some(other.clone())).abandoned_for(&me(), gone));
        assert!(
            lease(Some(other.clone())).abandoned_for(&me(), reused),
            "pid reused by another process"
        );
        assert!(!lease(Some(other.clone())).abandoned_for(&me(), running));
        // Same hostname in `holder`, but another boot or pid namespace: another machine.
        let elsewhere = Machine {
            boot_id: "b-2".into(),
            ..other.clone()
        };
        assert!(!lease(Some(elsewhere)).abandoned_for(&me(), gone));
        let container = Machine {
            pid_ns: "pid:[4026532000]".into(),
            ..other
        };
        assert!(!lease(Some(container)).abandoned_for(&me(), gone));
        // Our own pid, and leases that do not say where they run.
        assert!(!lease(Some(me())).abandoned_for(&me(), gone));
        assert!(!lease(None).abandoned_for(&me(), gone));
    }

    #[test]
    fn parses_bodies_with_and_without_a_machine() {
        let b = lease(Some(me()));
        let bytes = serde_json::to_vec(&b).unwrap();
        assert_eq!(LeaseBody::parse(&bytes), Some(b));
        let old = br#"{"holder":"h:1:0","purpose":"gc","expires_at":"2026-11-18T11:06:40Z"}"#;
        let old = LeaseBody::parse(old).unwrap();
        assert_eq!(old.machine, None);
        assert!(old.is_live(Timestamp(1_795_000_000 - 1)) && !old.is_live(Timestamp(1_795_000_000)));
        assert_eq!(LeaseBody::parse(b"not json"), None);
    }

    #[test]
    fn start_time_from_stat() {
        let stat =
            "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(stat_start_time(stat), Some(987_654));
        assert_eq!(stat_start_time("4242 (x) S 1"), None);
        assert_eq!(stat_start_time("no parens"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert!(stat_start_time(&own).is_some(), "{own}");
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300), text in ".{0,200}") {
            let _ = LeaseBody::parse(&bytes);
            let _ = stat_start_time(&text);
        }
    }
}
