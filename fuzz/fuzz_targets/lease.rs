//! Fuzzes the reading of store leases (`qsync_core::lease`): the unsigned
//! `locks/...` bodies anyone who can write the store can write, and the
//! `/proc/<pid>/stat` text a publisher reads to tell whether a lease's
//! holder still runs.
//!
//! The first byte chooses: a lease body, or a process name placed into an
//! otherwise well-formed stat line.
//!
//! Invariants: nothing panics; a body that parses round-trips through
//! serde, and is never "abandoned" for the process that holds it; the start
//! time is found in a stat line whatever the process name holds (spaces,
//! parentheses, digits), and arbitrary stat text never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use qsync_core::lease::{stat_start_time, LeaseBody};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let Some(body) = LeaseBody::parse(bytes) else {
            return;
        };
        let written = serde_json::to_vec(&body).expect("a lease serialises");
        assert_eq!(LeaseBody::parse(&written).as_ref(), Some(&body));
        if let Some(m) = &body.machine {
            assert!(
                !body.abandoned_for(m, |_| None),
                "a lease was abandoned for its own holder"
            );
        }
        let _ = body.is_live(body.expires_at);
    } else {
        let text = String::from_utf8_lossy(bytes);
        let _ = stat_start_time(&text);
        // What the kernel writes: pid, (comm), state, fields 4-21, start time.
        let comm: String = text.chars().filter(|c| *c != '\n').take(64).collect();
        let start = u64::from(mode) * 1_000_003;
        let fields: Vec<String> = (4..=21).map(|i| i.to_string()).collect();
        let stat = format!("4242 ({comm}) S {} {start} 0 0\n", fields.join(" "));
        assert_eq!(stat_start_time(&stat), Some(start), "{stat:?}");
    }
});
