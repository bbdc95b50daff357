//! The agent's TOML configuration: one `[agent]` table and one `[[chain]]`
//! table per chain (docs/operations.md lists every key; `qsync.example.toml`
//! is a documented example). Unknown keys are errors, durations are
//! humantime strings ("90s", "6h", "14d"), and [`Config::load`] checks
//! everything that can be checked before the first cycle: schedules parse,
//! chain names are valid, each strategy has what it needs.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use qsync_core::chunk::ChunkerParams;
use qsync_core::ChainName;
use std::sync::Arc;

use qsync_store::{StoreOptions, StoreUrl};

use crate::chainmeta::ChainHead;
use crate::options::SnapshotOptions;
use serde::{Deserialize, Deserializer};

/// A whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-wide settings.
    #[serde(default)]
    pub agent: AgentSection,
    /// The chains to snapshot.
    #[serde(default, rename = "chain")]
    pub chains: Vec<ChainConfig>,
}

/// `[agent]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentSection {
    /// Address of `/healthz` and `/metrics`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Where the agent keeps what it remembers between cycles (the index of
    /// unchanged files).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection {
            listen: default_listen(),
            state_dir: default_state_dir(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:9464".into()
}

fn default_state_dir() -> PathBuf {
    "/var/lib/qsync".into()
}

/// One `[[chain]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ChainConfig {
    /// Chain name: 1-64 of a-z 0-9 . _ -
    pub name: String,
    /// The node's data directory.
    pub source: PathBuf,
    /// When cycles run: cron with seconds (`sec min hour day month weekday`).
    pub schedule: String,
    /// When the pointer is re-signed to move its expiry, while the last
    /// cycle is younger than `max-age` (cron with seconds).
    #[serde(default = "default_resign")]
    pub resign: String,
    /// minisign secret key, or a list of them during a key rotation (the
    /// old key first: its signature stays where every reader looks).
    #[serde(deserialize_with = "one_or_more_paths")]
    pub secret_key: Vec<PathBuf>,
    /// Stores to publish to (directories, s3://, ipfs+http://).
    pub stores: Vec<StoreUrl>,
    /// How long fetchers accept the pointer without a re-sign.
    #[serde(default = "default_expires_in", deserialize_with = "duration")]
    pub expires_in: Duration,
    /// How long each snapshot stays restorable (the manifest's expiry).
    #[serde(default = "default_lifetime", deserialize_with = "duration")]
    pub lifetime: Duration,
    /// `/healthz` fails, and re-signing stops, once the last successful
    /// cycle is older than this.
    #[serde(default = "default_max_age", deserialize_with = "duration")]
    pub max_age: Duration,
    /// Average chunk size in KiB (256-4096).
    #[serde(default = "default_chunk_size")]
    pub chunk_size: u32,
    /// Chunks in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Trust a file whose inode, size and modification time match the last
    /// cycle's record instead of reading it again.
    #[serde(default = "yes")]
    pub skip_unchanged: bool,
    /// Cache max-age of the pointer and catalog on S3.
    #[serde(default = "default_pointer_max_age", deserialize_with = "duration")]
    pub pointer_max_age: Duration,
    /// CloudFront distribution in front of the stores (an s3:// bucket or a
    /// directory `qsync serve` exposes): invalidated after each publish.
    #[serde(default)]
    pub cloudfront_distribution_id: Option<String>,
    /// Endpoint of an S3-compatible server.
    #[serde(default)]
    pub s3_endpoint: Option<String>,
    /// Path-style S3 addressing.
    #[serde(default)]
    pub s3_path_style: bool,
    /// Requester-pays S3 bucket.
    #[serde(default)]
    pub s3_requester_pays: bool,
    /// Publish to stores that ignore conditional writes (`If-None-Match`,
    /// `If-Match`), relying on leases alone; otherwise such a store is
    /// refused at the start of each cycle.
    #[serde(default)]
    pub lease_only: bool,
    /// How the node is held still while it is read.
    #[serde(default)]
    pub freeze: FreezeConfig,
    /// Where the head block comes from.
    #[serde(default)]
    pub metadata: Option<MetadataConfig>,
    /// What to keep.
    #[serde(default)]
    pub retention: Retention,
}

fn default_resign() -> String {
    "0 0 * * * *".into()
}
fn default_expires_in() -> Duration {
    Duration::from_secs(14 * 24 * 3600)
}
fn default_lifetime() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}
fn default_max_age() -> Duration {
    Duration::from_secs(2 * 24 * 3600)
}
fn default_chunk_size() -> u32 {
    4096
}
fn default_concurrency() -> usize {
    8
}
fn default_pointer_max_age() -> Duration {
    Duration::from_secs(60)
}
fn yes() -> bool {
    true
}

/// `[chain.freeze]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FreezeConfig {
    /// hooks, hardlink or path.
    #[serde(default)]
    pub strategy: Strategy,
    /// Command (argv) that freezes the node; empty for none.
    #[serde(default)]
    pub pre: Vec<String>,
    /// Command that thaws it; runs whenever `pre` was started.
    #[serde(default)]
    pub post: Vec<String>,
    /// Longest a hook may run before it is killed.
    #[serde(default = "default_hook_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// hardlink: file-name patterns of files never modified in place.
    #[serde(default = "default_immutable")]
    pub immutable: Vec<String>,
    /// hardlink: staging directory on the source's filesystem
    /// [default: `.qsync-staging-<chain>` beside the source].
    #[serde(default)]
    pub staging: Option<PathBuf>,
    /// path: the consistent copy the pre hook produces, read instead of the source.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

impl Default for FreezeConfig {
    fn default() -> Self {
        FreezeConfig {
            strategy: Strategy::default(),
            pre: Vec::new(),
            post: Vec::new(),
            timeout: default_hook_timeout(),
            immutable: default_immutable(),
            staging: None,
            path: None,
        }
    }
}

fn default_hook_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_immutable() -> Vec<String> {
    vec!["*.sst".into(), "*.ldb".into()]
}

/// How the node is held still.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Frozen (pre .. post) for the whole read.
    #[default]
    Hooks,
    /// Frozen only while immutable files are hard-linked and the rest copied.
    Hardlink,
    /// The pre hook makes a consistent copy at `path`; the node is thawed at once.
    Path,
}

/// `[chain.metadata]`: exactly one of `rpc` (with `kind`) or `command`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MetadataConfig {
    /// The node's RPC flavour.
    #[serde(default)]
    pub kind: Option<RpcKind>,
    /// The node's RPC URL, asked while the node is frozen.
    #[serde(default)]
    pub rpc: Option<String>,
    /// A command printing `{"height": N, "block_hash": "..."}`, run while frozen.
    #[serde(default)]
    pub command: Vec<String>,
    /// Longest the query may take.
    #[serde(default = "default_metadata_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

fn default_metadata_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Node RPC flavours qsync can ask for the head block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RpcKind {
    /// `eth_getBlockByNumber("latest")` (geth, erigon, reth, nethermind, ganache).
    Ethereum,
    /// `chain_getHeader` and `chain_getBlockHash` (Polkadot SDK nodes).
    Substrate,
    /// `GET /status` (CometBFT and Tendermint nodes).
    Cometbft,
}

/// `[chain.retention]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Retention {
    /// Newest snapshots kept.
    #[serde(default = "default_keep_last")]
    pub keep_last: usize,
    /// Also the newest snapshot of each of the last N days (UTC).
    #[serde(default)]
    pub keep_daily: usize,
    /// Also the newest snapshot of each of the last N weeks.
    #[serde(default)]
    pub keep_weekly: usize,
    /// Delete chunks no kept manifest references after each cycle.
    #[serde(default = "yes")]
    pub gc: bool,
    /// Unreferenced objects younger than this are left alone.
    #[serde(default = "default_gc_grace", deserialize_with = "duration")]
    pub gc_grace: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_last: default_keep_last(),
            keep_daily: 0,
            keep_weekly: 0,
            gc: true,
            gc_grace: default_gc_grace(),
        }
    }
}

fn default_keep_last() -> usize {
    3
}
fn default_gc_grace() -> Duration {
    Duration::from_secs(3600)
}

/// A path, or a non-empty list of paths.
fn one_or_more_paths<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMore {
        One(PathBuf),
        More(Vec<PathBuf>),
    }
    let paths = match OneOrMore::deserialize(d)? {
        OneOrMore::One(p) => vec![p],
        OneOrMore::More(v) => v,
    };
    if paths.is_empty() {
        return Err(serde::de::Error::custom(
            "no key given; name the secret key file, or two (old first) during a key rotation",
        ));
    }
    Ok(paths)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration like 90s, 6h or 14d ({e})")))
}

/// A configuration that cannot be used, with the file and what to change.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong and what to do.
    #[source]
    pub problem: ConfigProblem,
}

/// What is wrong with a configuration, and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigProblem {
    /// The file cannot be read.
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    /// Not TOML, or not the keys and types documented.
    #[error("{0}")]
    Syntax(#[source] Box<toml::de::Error>),
    /// No chain to snapshot.
    #[error("no [[chain]] table; add one per chain to snapshot")]
    NoChains,
    /// One chain's table is wrong.
    #[error("[[chain]] {chain:?}: {problem}")]
    Chain {
        /// The chain's name as written.
        chain: String,
        /// What is wrong.
        problem: Box<ChainProblem>,
    },
    /// A command named a chain the file does not have.
    #[error("no chain {name:?} in the configuration (it has: {known})")]
    UnknownChain {
        /// The name asked for.
        name: String,
        /// The names the file has, comma-separated.
        known: String,
    },
}

/// What is wrong with one `[[chain]]` table.
#[derive(Debug, thiserror::Error)]
pub enum ChainProblem {
    /// The name, the chunk size or another value of the wire format.
    #[error("{0}")]
    Format(#[from] qsync_core::FormatError),
    /// A second table with the same name.
    #[error("appears twice; each chain needs one table")]
    Duplicate,
    /// `schedule` or `resign` does not parse.
    #[error("{key}: {source}")]
    Schedule {
        /// Which key.
        key: &'static str,
        /// Why.
        source: ScheduleError,
    },
    /// `stores = []`.
    #[error("stores is empty; name at least one store")]
    NoStores,
    /// A freeze strategy without what it needs.
    #[error("freeze strategy \"{strategy}\" needs {needs}")]
    Freeze {
        /// The strategy.
        strategy: &'static str,
        /// What to add.
        needs: &'static str,
    },
    /// A metadata table that names neither an RPC nor a command.
    #[error("[chain.metadata] needs either rpc with kind (ethereum, substrate, cometbft) or command")]
    Metadata,
    /// `retention.keep-last = 0`.
    #[error("retention.keep-last must be at least 1")]
    KeepNone,
    /// More kept snapshots than a pointer names.
    #[error("retention keeps up to {kept} snapshots, but a pointer names at most {most}; lower keep-last, keep-daily or keep-weekly")]
    KeepTooMany {
        /// keep-last + keep-daily + keep-weekly.
        kept: usize,
        /// What a pointer holds.
        most: usize,
    },
}

/// A schedule that is not a cron expression with seconds.
#[derive(Debug, thiserror::Error)]
#[error("{expr:?} is not a cron expression with seconds, like \"0 0 */6 * * *\" ({source})")]
pub struct ScheduleError {
    /// The expression as written.
    pub expr: String,
    /// The parser's complaint.
    pub source: cron::error::Error,
}

impl Config {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let err = |problem| ConfigError {
            path: path.into(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(ConfigProblem::Read(e)))?;
        let cfg: Config = toml::from_str(&text).map_err(|e| err(ConfigProblem::Syntax(Box::new(e))))?;
        cfg.check().map_err(err)?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), ConfigProblem> {
        if self.chains.is_empty() {
            return Err(ConfigProblem::NoChains);
        }
        let mut names = std::collections::HashSet::new();
        for c in &self.chains {
            let in_chain = |problem| ConfigProblem::Chain {
                chain: c.name.clone(),
                problem: Box::new(problem),
            };
            if !names.insert(&c.name) {
                return Err(in_chain(ChainProblem::Duplicate));
            }
            c.check().map_err(in_chain)?;
        }
        Ok(())
    }

    /// The chain called `name`.
    pub fn chain(&self, name: &str) -> Result<&ChainConfig, ConfigProblem> {
        self.chains
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| ConfigProblem::UnknownChain {
                name: name.into(),
                known: self
                    .chains
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

impl ChainConfig {
    fn check(&self) -> Result<(), ChainProblem> {
        ChainName::new(self.name.clone())?;
        for (key, expr) in [("schedule", &self.schedule), ("resign", &self.resign)] {
            parse_schedule(expr).map_err(|source| ChainProblem::Schedule { key, source })?;
        }
        if self.stores.is_empty() {
            return Err(ChainProblem::NoStores);
        }
        ChunkerParams::with_average_kib(self.chunk_size)?;
        let f = &self.freeze;
        let needs = |strategy, needs| Err(ChainProblem::Freeze { strategy, needs });
        match f.strategy {
            Strategy::Path if f.path.is_none() => {
                return needs("path", "freeze.path, the directory the pre hook fills")
            }
            Strategy::Path if f.pre.is_empty() => {
                return needs("path", "a pre hook that produces freeze.path")
            }
            Strategy::Hardlink if f.immutable.is_empty() => return needs("hardlink", "immutable patterns"),
            _ => {}
        }
        if let Some(m) = &self.metadata {
            if !matches!(
                (&m.rpc, m.kind, m.command.is_empty()),
                (Some(_), Some(_), true) | (None, None, false)
            ) {
                return Err(ChainProblem::Metadata);
            }
        }
        let r = &self.retention;
        if r.keep_last == 0 {
            return Err(ChainProblem::KeepNone);
        }
        // The pointer holds the current snapshot and at most HISTORY_LEN more.
        let most = qsync_core::pointer::HISTORY_LEN + 1;
        let kept = r.keep_last + r.keep_daily + r.keep_weekly;
        if kept > most {
            return Err(ChainProblem::KeepTooMany { kept, most });
        }
        Ok(())
    }

    /// How to reach this chain's stores: S3 settings, and CloudFront as
    /// the edge cache of each store when a distribution is configured.
    pub fn store_options(&self) -> StoreOptions {
        let mut opts = StoreOptions::default();
        opts.s3.endpoint = self.s3_endpoint.clone();
        opts.s3.path_style = self.s3_path_style;
        opts.s3.requester_pays = self.s3_requester_pays;
        opts.s3.pointer_max_age = self.pointer_max_age;
        opts.edge_cache = self.cloudfront_distribution_id.as_ref().map(|id| {
            Arc::new(qsync_cdn::cloudfront::CloudFront {
                distribution: id.clone(),
            }) as Arc<dyn qsync_store::EdgeCache>
        });
        opts
    }

    /// What one cycle of this chain publishes, with the head block `head`.
    pub fn snapshot_options(&self, chain: ChainName, head: Option<&ChainHead>) -> SnapshotOptions {
        let mut o = SnapshotOptions::new(chain);
        o.height = head.map(|h| h.height);
        o.block_hash = head.map(|h| h.block_hash.clone());
        o.expires_in = self.expires_in;
        o.lifetime = self.lifetime;
        o.concurrency = self.concurrency;
        o.chunker = ChunkerParams::with_average_kib(self.chunk_size).expect("checked by Config::load");
        o.retention = Some(self.retention.clone());
        o
    }
}

/// Parses a cron expression with seconds.
pub fn parse_schedule(expr: &str) -> Result<cron::Schedule, ScheduleError> {
    cron::Schedule::from_str(expr).map_err(|source| ScheduleError {
        expr: expr.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        let cfg: Config = toml::from_str(text).unwrap();
        cfg.check().unwrap();
        cfg
    }

    /// What is wrong with `text`, as the operator reads it.
    fn problem(text: &str) -> String {
        match toml::from_str::<Config>(text) {
            Err(e) => e.to_string(),
            Ok(cfg) => cfg.check().unwrap_err().to_string(),
        }
    }

    const MINIMAL: &str = r#"
        [[chain]]
        name = "polkadot"
        source = "/data/db"
        schedule = "0 0 */6 * * *"
        secret-key = "/keys/qsync.sec"
        stores = ["/mnt/backup"]
    "#;

    #[test]
    fn the_example_config_parses() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../qsync.example.toml")).unwrap();
        let cfg = parse(&text);
        assert_eq!(cfg.agent.listen, "127.0.0.1:9464");
        assert_eq!(cfg.chains[0].freeze.strategy, Strategy::Hooks);
        assert_eq!(cfg.chains[0].retention.keep_last, 3);
    }

    #[test]
    fn defaults_and_unknown_keys() {
        let cfg = parse(MINIMAL);
        let c = &cfg.chains[0];
        assert_eq!(c.freeze.immutable, ["*.sst", "*.ldb"]);
        assert_eq!(c.retention.keep_last, 3);
        assert!(c.skip_unchanged);
        assert!(
            !c.lease_only,
            "conditional writes are required unless asked otherwise"
        );
        assert!(parse(&format!("{MINIMAL}\nlease-only = true")).chains[0].lease_only);
        let e = problem(&format!("{MINIMAL}\nsurprise = 1"));
        assert!(e.contains("surprise"), "{e}");
        let e = problem(&MINIMAL.replace("*/6", "every six hours"));
        assert!(e.contains("cron"), "{e}");
        let e = problem(&format!(
            "{MINIMAL}\n[chain.freeze]\nstrategy = \"path\"\npre = [\"true\"]"
        ));
        assert!(e.contains("freeze.path"), "{e}");
        let e = problem(&format!("{MINIMAL}\n[chain.metadata]\nrpc = \"http://x\""));
        assert!(e.contains("kind"), "{e}");
        let e = problem(&format!("{MINIMAL}\nexpires-in = \"soon\""));
        assert!(e.contains("duration"), "{e}");
        let e = problem(&format!(
            "{MINIMAL}\n[chain.retention]\nkeep-last = 30\nkeep-weekly = 8"
        ));
        assert!(e.contains("at most 33"), "{e}");
        let e = problem(&format!("{MINIMAL}\nchunk-size = 9000"));
        assert!(e.contains("256 to 4096"), "{e}");
    }

    #[test]
    fn secret_key_is_one_path_or_a_list_for_a_rotation() {
        assert_eq!(
            parse(MINIMAL).chains[0].secret_key,
            [PathBuf::from("/keys/qsync.sec")]
        );
        let two = MINIMAL.replace(
            r#"secret-key = "/keys/qsync.sec""#,
            r#"secret-key = ["/keys/old.sec", "/keys/new.sec"]"#,
        );
        assert_eq!(
            parse(&two).chains[0].secret_key,
            [PathBuf::from("/keys/old.sec"), PathBuf::from("/keys/new.sec")]
        );
        let none = MINIMAL.replace(r#"secret-key = "/keys/qsync.sec""#, "secret-key = []");
        let e = problem(&none);
        assert!(e.contains("secret") || e.contains("no key given"), "{e}");
    }
}
