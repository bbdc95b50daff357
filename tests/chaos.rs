//! Chaos: `qsync restore` and `qsync snapshot` killed with SIGKILL at random
//! points, round after round, with the destination or the store checked
//! after every kill and after every rerun.
//!
//! Restore: a destination carrying the completion marker must hold exactly
//! the snapshot the marker names, whatever instant the kill hit, and a rerun
//! (sometimes against a newer snapshot published in between) must make it
//! byte-identical to the source. Publish: whatever pointer the store holds
//! after a kill must reach only complete, correctly hashed objects (`qsync
//! verify` exits 0) and restore to the tree it was published from; the rerun
//! must complete and restore to the source.
//!
//! Each kill instant is a random fraction of the operation's measured
//! duration (the last uninterrupted run, or a killed run's elapsed time plus
//! its rerun's). The seed is printed and taken from `QSYNC_CHAOS_SEED` when
//! set: it replays every choice (fractions, mirrors, concurrency,
//! mutations); the instant itself moves with the machine's load. The number
//! of rounds is fixed and every run of the binary is bounded by [`HANG`].

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::s3::{aws_env, S3Server};
use common::*;
use serde_json::Value;

/// Kill-and-resume rounds per test.
const ROUNDS: usize = 8;
/// Size of the generated sample.
const SAMPLE_MIB: u64 = 32;
/// Longest an uninterrupted run of the binary may take before the test
/// calls it a hang (a bound, not a timed assertion: runs take about 1 s).
const HANG: Duration = Duration::from_secs(120);

type Files = BTreeMap<String, (u32, String)>;

/// The seeded choices of one test, and where it is (for failure messages).
struct Chaos {
    test: &'static str,
    seed: u64,
    state: u64,
    round: usize,
}

impl Chaos {
    /// The seed from `QSYNC_CHAOS_SEED`, else from the clock; `stream`
    /// keeps the two tests' choices apart under one seed.
    fn new(test: &'static str, stream: u64) -> Chaos {
        let seed = match std::env::var("QSYNC_CHAOS_SEED") {
            Ok(s) => s
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("QSYNC_CHAOS_SEED={s:?} is not an unsigned 64-bit integer")),
            Err(_) => SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64,
        };
        eprintln!("{test}: chaos seed {seed} (QSYNC_CHAOS_SEED={seed} replays its choices)");
        Chaos {
            test,
            seed,
            state: seed ^ stream,
            round: 0,
        }
    }

    /// splitmix64.
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }

    /// Uniform in [0, 1).
    fn fraction(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The prefix of every failure message: seed and round.
    fn at(&self) -> String {
        format!(
            "{} (seed {}, replay with QSYNC_CHAOS_SEED={}), round {}",
            self.test, self.seed, self.seed, self.round
        )
    }
}

/// How a run that was to be killed ended.
enum Run {
    /// SIGKILLed this long after it started.
    Killed(Duration),
    /// Finished (successfully) by itself before the kill was due.
    Finished(Duration),
}

impl Run {
    fn describe(&self) -> String {
        match self {
            Run::Killed(t) => format!("killed at {} ms", t.as_millis()),
            Run::Finished(t) => format!("finished by itself in {} ms", t.as_millis()),
        }
    }
}

/// Starts `cmd` and SIGKILLs it `after` from its start unless it ends first;
/// a run that ends by itself must have succeeded.
fn kill_after(mut cmd: Command, after: Duration, at: &str, what: &str) -> Run {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let drain = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let took = started.elapsed();
            let stderr = drain.join().unwrap();
            assert!(
                status.success(),
                "{at}: {what} ended by itself after {took:?} but failed ({status}): {stderr}"
            );
            return Run::Finished(took);
        }
        let elapsed = started.elapsed();
        if elapsed >= after {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            let _ = drain.join();
            return Run::Killed(elapsed);
        }
        std::thread::sleep((after - elapsed).min(Duration::from_millis(2)));
    }
}

/// Runs `cmd` to its end (killed and failed as a hang after [`HANG`]);
/// returns (success, stdout, stderr, duration).
fn run_timed(cmd: Command, at: &str, what: &str) -> (bool, String, String, Duration) {
    let started = Instant::now();
    let (code, out, err) = run_bounded(cmd, HANG, &format!("{at}: {what}"));
    (code == 0, out, err, started.elapsed())
}

/// Runs `cmd` to its end; it must succeed and print JSON.
fn finish(cmd: Command, at: &str, what: &str) -> (Value, Duration) {
    let (ok, out, err, took) = run_timed(cmd, at, what);
    assert!(ok, "{at}: {what} failed: {err}{out}");
    let v =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{at}: {what} printed no JSON ({e}): {out}"));
    (v, took)
}

/// What differs between `want` and `got`, at most a dozen paths.
fn diff(want: &Files, got: &Files) -> String {
    let mut lines = Vec::new();
    for (p, w) in want {
        match got.get(p) {
            None => lines.push(format!("missing {p}")),
            Some(g) if g != w => lines.push(format!("differs {p}: want {w:?}, found {g:?}")),
            _ => {}
        }
    }
    lines.extend(
        got.keys()
            .filter(|p| !want.contains_key(*p))
            .map(|p| format!("extra {p}")),
    );
    let n = lines.len();
    lines.truncate(12);
    format!("{n} paths differ: {}", lines.join("; "))
}

/// The next kill instant: a random fraction of the measured duration.
fn kill_point(rng: &mut Chaos, measured: Duration) -> Duration {
    measured.mul_f64(rng.fraction())
}

/// The operation's duration as this round measured it: a killed run's
/// elapsed time plus its rerun's, or the uninterrupted run's.
fn measured(run: &Run, rerun: Duration) -> Duration {
    match run {
        Run::Killed(t) => *t + rerun,
        Run::Finished(t) => *t,
    }
}

// ---------------------------------------------------------------- restore

/// Snapshots `src` into each store (kept in step, so their versions agree)
/// and records the tree under each manifest digest; returns the digests.
fn publish_to_all(
    env: &Env,
    src: &Path,
    stores: &[&Path],
    trees: &mut HashMap<String, Files>,
    at: &str,
) -> Vec<String> {
    // One publish, copied byte for byte into the other stores: they are
    // mirrors of one lineage. (Publishing into each on its own makes two
    // different snapshots of one version, and restoring the older one after
    // the newer is rightly refused as a rollback.)
    let files = files(src);
    let (first, others) = stores.split_first().expect("at least one store");
    let cmd = env.snapshot_to(src, first.to_str().unwrap(), "eth");
    let (s, _) = finish(cmd, at, &format!("snapshot into {}", first.display()));
    let digest = s["manifest_blake3"].as_str().unwrap().to_string();
    trees.insert(digest.clone(), files);
    for other in others {
        let copied = Command::new("cp")
            .arg("-a")
            .arg(first.join("."))
            .arg(other)
            .status()
            .unwrap();
        assert!(
            copied.success(),
            "{at}: copying the store into {}",
            other.display()
        );
    }
    vec![digest]
}

/// A restore from `froms` (all mirrors of one another) into `dest`.
fn restore_from(env: &Env, froms: &[String], dest: &Path, concurrency: u32) -> Command {
    let mut c = env.restore_cmd(&froms[0], "eth", dest);
    for f in &froms[1..] {
        c.args(["--from", f]);
    }
    c.args(["--concurrency", &concurrency.to_string()]);
    c
}

/// Check (a): a completion marker vouches for exactly the snapshot it names.
fn check_marker(dest: &Path, trees: &HashMap<String, Files>, at: &str) -> Option<String> {
    let path = dest.join(".qsync-restore.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("{at}: reading {}: {e}", path.display()),
    };
    let marker: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{at}: the completion marker {} is not JSON ({e}): {:?}",
            path.display(),
            String::from_utf8_lossy(&bytes)
        )
    });
    let digest = marker["manifest_blake3"].as_str().unwrap_or_default().to_string();
    let want = trees.get(&digest).unwrap_or_else(|| {
        panic!("{at}: the completion marker names manifest {digest:?}, which no snapshot of this test published: {marker}")
    });
    let got = files(dest);
    assert!(
        &got == want,
        "{at}: DEST carries the completion marker of version {} but is not that snapshot: {}",
        marker["version"],
        diff(want, &got)
    );
    Some(digest)
}

#[test]
fn restores_killed_at_random_points_never_mark_a_wrong_tree_and_resume() {
    let started = Instant::now();
    let mut rng = Chaos::new("restore chaos", 0x7265_7374_6f72_6521);
    let env = Env::new();
    let src = env.path("src");
    sample(&src, SAMPLE_MIB);
    let served = env.path("served-store");
    std::fs::create_dir_all(&served).unwrap();
    let server = Server::start(&served);
    let stores = [env.store.as_path(), served.as_path()];
    let local = env.store.to_str().unwrap().to_string();
    let mirrors = [
        vec![local.clone()],
        vec![server.url.clone()],
        vec![server.url.clone(), local.clone()],
    ];
    let mut trees = HashMap::new();
    let mut latest = publish_to_all(&env, &src, &stores, &mut trees, &rng.at());

    // The measured duration of a full restore, into a scratch destination.
    let scratch = env.path("calibration");
    let (_, mut duration) = finish(
        restore_from(&env, &mirrors[0], &scratch, 8),
        &rng.at(),
        "calibration restore",
    );
    std::fs::remove_dir_all(&scratch).unwrap();

    let dest = env.path("dest");
    let mut kills = 0;
    for round in 0..ROUNDS {
        rng.round = round;
        if round > 0 {
            // A newer snapshot, so this round's restore is a top-up with work to do.
            mutate(&src, 20 + rng.below(30) as u32, Some(rng.next()));
            latest = publish_to_all(&env, &src, &stores, &mut trees, &rng.at());
        }
        let froms = rng.pick(&[0usize, 1, 2]);
        let concurrency = rng.pick(&[1u32, 2, 4, 8, 16]);
        let after = kill_point(&mut rng, duration);
        let at = rng.at();
        let run = kill_after(
            restore_from(&env, &mirrors[froms], &dest, concurrency),
            after,
            &at,
            "the restore to be killed",
        );
        kills += matches!(run, Run::Killed(_)) as usize;
        let marked = check_marker(
            &dest,
            &trees,
            &format!("{at}, after the restore was {}", run.describe()),
        );

        // Sometimes the resume meets a newer manifest than the one it began.
        let newer = rng.below(3) == 0;
        if newer {
            mutate(&src, 5 + rng.below(20) as u32, Some(rng.next()));
            latest = publish_to_all(&env, &src, &stores, &mut trees, &at);
        }
        let rerun_from = rng.pick(&[0usize, 1, 2]);
        let rerun_concurrency = rng.pick(&[1u32, 4, 8]);
        eprintln!(
            "{at}: restore from {:?} --concurrency {concurrency}, kill due at {} of {} ms: {}, marker {}; rerun from {:?}{}",
            mirrors[froms],
            after.as_millis(),
            duration.as_millis(),
            run.describe(),
            if marked.is_some() { "present and true" } else { "absent" },
            mirrors[rerun_from],
            if newer { " after a newer snapshot" } else { "" },
        );
        let (summary, took) = finish(
            restore_from(&env, &mirrors[rerun_from], &dest, rerun_concurrency),
            &at,
            "the rerun of the killed restore",
        );
        duration = measured(&run, took);
        let (want, got) = (tree(&src), tree(&dest));
        assert!(
            want == got,
            "{at}: after the rerun DEST is not the source ({}): {}",
            run.describe(),
            diff(&want, &got)
        );
        let marker = check_marker(&dest, &trees, &format!("{at}, after the rerun"));
        assert!(
            marker.as_ref().is_some_and(|d| latest.contains(d)),
            "{at}: after the rerun the marker names {marker:?}, not the latest snapshot {latest:?}: {summary}"
        );
        for leftover in [".qsync-restore.partial.json", ".qsync-restore.journal"] {
            assert!(
                !dest.join(leftover).exists(),
                "{at}: {leftover} left behind by a completed rerun"
            );
        }
    }
    eprintln!(
        "{}: {ROUNDS} rounds, {kills} killed mid-run, {:?}",
        rng.test,
        started.elapsed()
    );
}

// ---------------------------------------------------------------- publish

/// One store the publish rounds write to, with its own key and trust state.
struct Target {
    env: Env,
    url: String,
    /// The S3 endpoint, for an S3 store.
    s3: Option<String>,
    /// The tree of the snapshot its pointer named before this round.
    published: Files,
    /// The version its pointer named before this round.
    version: u64,
    duration: Duration,
}

impl Target {
    fn aws(&self, mut c: Command) -> Command {
        if let Some(endpoint) = &self.s3 {
            aws_env(&mut c, endpoint);
        }
        c
    }

    fn snapshot(&self, src: &Path, concurrency: u32) -> Command {
        let mut c = self.env.snapshot_to(src, &self.url, "eth");
        c.args(["--concurrency", &concurrency.to_string()]);
        self.aws(c)
    }

    /// `qsync verify` of the store: exits 0 or the test fails; its report.
    fn verify(&self, at: &str) -> Value {
        let mut c = qsync();
        c.args([
            "verify",
            "--from",
            &self.url,
            "--chain",
            "eth",
            "--json",
            "--public-key",
        ])
        .arg(&self.env.pk);
        let (ok, out, err, _) = run_timed(self.aws(c), at, "verify");
        assert!(
            ok,
            "{at}: qsync verify --from {} found the store incomplete or bad: {err}{out}",
            self.url
        );
        serde_json::from_str(&out).unwrap()
    }

    /// A restore of the latest snapshot into a fresh destination, which is
    /// then deleted; returns its tree and the version restored.
    fn fresh_restore(&self, name: &str, at: &str) -> (Files, u64) {
        let dest = self.env.path(name);
        let cmd = self.aws(self.env.restore_cmd(&self.url, "eth", &dest));
        let (summary, _) = finish(cmd, at, &format!("a fresh restore from {}", self.url));
        let t = tree(&dest);
        std::fs::remove_dir_all(&dest).unwrap();
        (t, summary["version"].as_u64().unwrap())
    }
}

#[test]
fn publishes_killed_at_random_points_leave_a_complete_pointer_and_resume() {
    let started = Instant::now();
    let mut rng = Chaos::new("publish chaos", 0x7075_626c_6973_6821);
    let local_env = Env::new();
    let src = local_env.path("src");
    sample(&src, SAMPLE_MIB);
    let s3_env = Env::new();
    let s3 = S3Server::start(&s3_env.path("s3"));
    let local_url = local_env.store.to_str().unwrap().to_string();
    let mut targets = Vec::new();
    for (env, url, endpoint) in [
        (local_env, local_url, None),
        (s3_env, s3.url("chaos"), Some(s3.endpoint.clone())),
    ] {
        let mut t = Target {
            env,
            url,
            s3: endpoint,
            published: files(&src),
            version: 0,
            duration: Duration::ZERO,
        };
        let (first, took) = finish(
            t.snapshot(&src, 8),
            &rng.at(),
            &format!("the first snapshot into {}", t.url),
        );
        t.version = first["version"].as_u64().unwrap();
        t.duration = took;
        targets.push(t);
    }

    let mut kills = 0;
    for round in 0..ROUNDS {
        rng.round = round;
        // Odd rounds publish to S3, even ones to the local store.
        let t = &mut targets[round % 2];
        let at = format!("{}, store {}", rng.at(), t.url);
        let t0 = Instant::now();
        mutate(&src, 1 + rng.below(10) as u32, Some(rng.next()));
        eprintln!("DBG mutate {:?}", t0.elapsed());
        let now = files(&src);
        eprintln!("DBG files {:?}", t0.elapsed());
        let before = t.version;
        let concurrency = rng.pick(&[1u32, 2, 4, 8]);
        let after = kill_point(&mut rng, t.duration);
        let run = kill_after(
            t.snapshot(&src, concurrency),
            after,
            &at,
            "the snapshot to be killed",
        );
        kills += matches!(run, Run::Killed(_)) as usize;
        let at_kill = format!("{at}, after the snapshot was {}", run.describe());

        // Whatever the pointer names now is complete and is what was published.
        let t0 = Instant::now();
        let version = t.verify(&at_kill)["version"].as_u64().unwrap();
        eprintln!("DBG verify {:?}", t0.elapsed());
        let (got, restored) = t.fresh_restore(&format!("after-kill-{round}"), &at_kill);
        assert_eq!(
            restored, version,
            "{at_kill}: restore and verify disagree on the version"
        );
        let want = match version {
            v if v == before => &t.published,
            v if v == before + 1 => &now,
            v => panic!("{at_kill}: the pointer moved from version {before} to {v}"),
        };
        eprintln!("DBG verify+restore {:?}", t0.elapsed());
        let files_got: Files = got.into_iter().filter(|(_, (_, h))| h != "dir").collect();
        assert!(
            &files_got == want,
            "{at_kill}: the pointer names version {version} (was {before}) but it restores to something else: {}",
            diff(want, &files_got)
        );

        let (summary, took) = finish(t.snapshot(&src, 8), &at_kill, "the rerun of the killed snapshot");
        eprintln!(
            "{at}: snapshot --concurrency {concurrency}, kill due at {} of {} ms: {}, pointer v{before} -> v{version}; rerun published v{}",
            after.as_millis(),
            t.duration.as_millis(),
            run.describe(),
            summary["version"]
        );
        t.duration = measured(&run, took);
        t.version = summary["version"].as_u64().unwrap();
        let (got, _) = t.fresh_restore(&format!("after-rerun-{round}"), &at_kill);
        eprintln!("DBG all {:?}", t0.elapsed());
        let want = tree(&src);
        eprintln!("DBG tree {:?}", t0.elapsed());
        assert!(
            got == want,
            "{at_kill}: a fresh restore after the rerun is not the source: {}",
            diff(&want, &got)
        );
        t.published = now;
    }
    eprintln!(
        "{}: {ROUNDS} rounds, {kills} killed mid-run, {:?}",
        rng.test,
        started.elapsed()
    );
}
