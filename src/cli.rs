//! Flags and environment variables of every command (docs/operations.md
//! lists them; a test checks that list against this file).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Signed, content-addressed chain snapshots: publish once, restore anywhere.
#[derive(Parser, Debug)]
#[command(name = "qsync", version, about)]
pub struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log format on stderr: text, json, or auto (json for `restore --init`
    /// when stderr is not a terminal, text otherwise).
    #[arg(long, global = true, env = "QSYNC_LOG_FORMAT", default_value = "auto")]
    pub log_format: LogFormat,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON for init containers not on a terminal, text otherwise.
    Auto,
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// qsync commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a minisign-compatible signing key pair.
    Keygen(KeygenArgs),
    /// Publish a data directory as the next signed snapshot of a chain.
    Snapshot(SnapshotArgs),
    /// Run the snapshot agent: every configured chain on its schedule, with
    /// /healthz and /metrics.
    Agent(AgentArgs),
    /// Delete manifests no pointer keeps and chunks no kept manifest references.
    Gc(GcArgs),
    /// Restore the latest snapshot of a chain into a directory.
    Restore(RestoreArgs),
    /// Check that every object the latest snapshot reaches exists and hashes right.
    Verify(VerifyArgs),
    /// List the snapshots in a store.
    Ls(LsArgs),
    /// Serve a local store read-only over HTTP.
    Serve(ServeArgs),
    /// Run the whole path on generated data: snapshot, serve, restore, verify.
    Demo(DemoArgs),
    /// Generate or advance chain-like sample data (for demos and benchmarks).
    Sample(SampleArgs),
}

/// `qsync keygen`.
#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Secret key file to create (mode 0600).
    #[arg(long, env = "QSYNC_SECRET_KEY")]
    pub secret_key: PathBuf,
    /// Public key file to create.
    #[arg(long, env = "QSYNC_PUBLIC_KEY")]
    pub public_key: PathBuf,
}

/// `qsync snapshot`.
#[derive(Args, Debug)]
pub struct SnapshotArgs {
    /// Agent configuration: run one cycle of --chain as configured there
    /// (freeze, metadata, every store, retention); needs --once.
    #[arg(long, env = "QSYNC_CONFIG", requires = "once", conflicts_with_all = ["source", "store", "secret_keys"])]
    pub config: Option<PathBuf>,
    /// With --config: run one cycle and exit (for a Kubernetes CronJob).
    #[arg(long, requires = "config")]
    pub once: bool,
    /// Chain data directory to publish.
    #[arg(long, env = "QSYNC_SOURCE", required_unless_present = "config")]
    pub source: Option<PathBuf>,
    /// Store to publish to: a directory, file:// URL, s3://BUCKET/PREFIX or ipfs+http://HOST:PORT[/MFS/DIR].
    #[arg(long, env = "QSYNC_STORE", required_unless_present = "config")]
    pub store: Option<String>,
    /// S3 settings.
    #[command(flatten)]
    pub s3: S3Flags,
    /// Cache max-age written on the pointer and catalog (S3); chunks and manifests are immutable.
    #[arg(long, env = "QSYNC_POINTER_MAX_AGE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub pointer_max_age: Duration,
    /// Another store holding this snapshot's chunks (e.g. ipfs://CID from a
    /// publish to IPFS), recorded in the pointer as a hint for readers; repeatable.
    #[arg(long = "mirror-hint", env = "QSYNC_MIRROR_HINT", value_delimiter = ',')]
    pub mirror_hints: Vec<String>,
    /// CloudFront distribution in front of the store: after publishing,
    /// invalidate the pointer paths that changed (AWS_ENDPOINT_URL_CLOUDFRONT is honoured).
    #[arg(long, env = "QSYNC_CLOUDFRONT_DISTRIBUTION_ID")]
    pub cloudfront_distribution_id: Option<String>,
    /// minisign secret key (encrypted keys read QSYNC_SECRET_KEY_PASSWORD).
    /// Give it twice during a key rotation, the old key first: its signature
    /// stays where every reader looks, the new key's goes beside it (env:
    /// comma-separated).
    #[arg(
        long = "secret-key",
        value_name = "FILE",
        env = "QSYNC_SECRET_KEY",
        value_delimiter = ',',
        required_unless_present = "config"
    )]
    pub secret_keys: Vec<PathBuf>,
    /// Chain name: 1-64 of a-z 0-9 . _ -
    #[arg(long, env = "QSYNC_CHAIN")]
    pub chain: String,
    /// Block height of the data, recorded in the manifest.
    #[arg(long, env = "QSYNC_HEIGHT")]
    pub height: Option<u64>,
    /// Head block hash of the data, recorded in the manifest.
    #[arg(long, env = "QSYNC_BLOCK_HASH")]
    pub block_hash: Option<String>,
    /// How long fetchers accept the pointer without a re-sign (e.g. 14d, 12h).
    #[arg(long, env = "QSYNC_EXPIRES_IN", default_value = "14d", value_parser = humantime::parse_duration)]
    pub expires_in: Duration,
    /// How long the snapshot itself stays restorable (manifest expiry; at least --expires-in).
    #[arg(long, env = "QSYNC_LIFETIME", default_value = "30d", value_parser = humantime::parse_duration)]
    pub lifetime: Duration,
    /// Average chunk size in KiB (min = 1/4, max = 4x; 256-4096). Smaller
    /// suits databases rewritten in place (MDBX); keep it fixed per chain.
    #[arg(long, env = "QSYNC_CHUNK_SIZE", default_value_t = 4096)]
    pub chunk_size: u32,
    /// Chunks in flight at once.
    #[arg(long, env = "QSYNC_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// Publish even to a store that ignores conditional writes
    /// (If-None-Match/If-Match), relying on leases alone: then run only one
    /// publisher per chain and store. With --config, as `lease-only = true`.
    #[arg(long, env = "QSYNC_LEASE_ONLY", value_parser = clap::builder::BoolishValueParser::new())]
    pub lease_only: bool,
    /// Print one JSON summary on stdout.
    #[arg(long, env = "QSYNC_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
}

/// `qsync agent`.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Agent configuration file (TOML; see qsync.example.toml).
    #[arg(long, env = "QSYNC_CONFIG")]
    pub config: PathBuf,
    /// Check the configuration (keys, schedules) and contact every store
    /// (credentials, bucket, write permission, conditional writes), then
    /// exit; non-zero when a check fails.
    #[arg(long)]
    pub check: bool,
}

/// `qsync gc`.
#[derive(Args, Debug)]
pub struct GcArgs {
    /// Store to collect: a directory, s3://BUCKET/PREFIX or ipfs+http://HOST:PORT[/MFS/DIR].
    #[arg(long, env = "QSYNC_STORE")]
    pub store: String,
    /// The publisher's public keys.
    #[command(flatten)]
    pub keys: PublicKeys,
    /// Unreferenced objects younger than this are kept.
    #[arg(long, env = "QSYNC_GC_GRACE", default_value = "1h", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Only report what would be deleted.
    #[arg(long)]
    pub dry_run: bool,
    /// S3 settings.
    #[command(flatten)]
    pub s3: S3Flags,
    /// Print one JSON report on stdout.
    #[arg(long, env = "QSYNC_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
}

/// `qsync restore`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Store to read from; repeat for mirrors (env: comma-separated).
    #[arg(long = "from", env = "QSYNC_FROM", required = true, value_delimiter = ',')]
    pub from: Vec<String>,
    /// The publisher's public keys.
    #[command(flatten)]
    pub keys: PublicKeys,
    /// Chain to restore.
    #[arg(long, env = "QSYNC_CHAIN")]
    pub chain: String,
    /// Destination directory (the node's data directory).
    #[arg(long, env = "QSYNC_DEST")]
    pub dest: PathBuf,
    /// Trust state directory [default: $XDG_STATE_HOME/qsync or ~/.local/state/qsync].
    #[arg(long, env = "QSYNC_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Accept an expired pointer or manifest (logs a warning).
    #[arg(long, env = "QSYNC_ALLOW_EXPIRED", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_expired: bool,
    /// Take over a non-empty destination without a qsync marker; files not in
    /// the snapshot are deleted.
    #[arg(long, env = "QSYNC_FORCE", value_parser = clap::builder::BoolishValueParser::new())]
    pub force: bool,
    /// Hash everything already in the destination instead of trusting the
    /// resume journal and the index of the last completed restore.
    #[arg(long, env = "QSYNC_VERIFY_EXISTING", value_parser = clap::builder::BoolishValueParser::new())]
    pub verify_existing: bool,
    /// Restore this older snapshot version instead of the latest: a
    /// deliberate rollback to a version the pointer still keeps (`qsync ls`).
    #[arg(long, env = "QSYNC_SNAPSHOT_VERSION")]
    pub snapshot_version: Option<u64>,
    /// Peer nodes: every address NAME resolves to (a Kubernetes headless
    /// service of `qsync serve --data` sidecars) is a mirror asked for
    /// chunks before the --from stores; port 8080 unless given.
    #[arg(long, env = "QSYNC_PEERS_DNS", value_name = "NAME[:PORT]")]
    pub peers_dns: Option<String>,
    /// Bearer token sent to --peers-dns peers (their `serve --token-file`);
    /// the --from stores' --http-token is never sent to peers.
    #[arg(long, env = "QSYNC_PEERS_HTTP_TOKEN", hide_env_values = true)]
    pub peers_http_token: Option<String>,
    /// Also fetch chunks from the stores the pointer names as mirror hints
    /// (e.g. an IPFS copy); everything read there is verified as usual.
    #[arg(long, env = "QSYNC_MIRROR_HINTS", value_parser = clap::builder::BoolishValueParser::new())]
    pub mirror_hints: bool,
    /// Mirror timeouts.
    #[command(flatten)]
    pub timeouts: Timeouts,
    /// Remote store settings.
    #[command(flatten)]
    pub remote: Remote,
    /// Init-container mode: a complete restore of this chain younger than
    /// --max-age is left alone (no network); otherwise restore or top up.
    #[arg(long, env = "QSYNC_INIT", value_parser = clap::builder::BoolishValueParser::new())]
    pub init: bool,
    /// With --init: how old a completed restore may be before it is topped up
    /// to the latest snapshot [default: never].
    #[arg(long, env = "QSYNC_MAX_AGE", value_parser = humantime::parse_duration)]
    pub max_age: Option<Duration>,
    /// Shell command that must succeed before the completion marker is written.
    #[arg(long, env = "QSYNC_VERIFY_CMD")]
    pub verify_cmd: Option<String>,
    /// Write Prometheus metrics of this run to this file (node-exporter textfile collector).
    #[arg(long, env = "QSYNC_METRICS_FILE")]
    pub metrics_file: Option<PathBuf>,
    /// Decide everything and write nothing: print the snapshot chosen and
    /// from which mirror, bytes to fetch and to keep, entries to delete,
    /// and free space needed and available (JSON with --json). Nothing is
    /// created or changed in --dest or the state directory.
    #[arg(long, env = "QSYNC_DRY_RUN", value_parser = clap::builder::BoolishValueParser::new(), conflicts_with = "init")]
    pub dry_run: bool,
    /// Most chunks in flight at once: the restore starts at 8 and takes
    /// more while the mirrors deliver more for it (a per-connection
    /// limited CDN), at most this many and 96 MiB of chunks.
    #[arg(long, env = "QSYNC_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,
    /// Print one JSON summary on stdout.
    #[arg(long, env = "QSYNC_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
    /// When stderr is not a terminal (a pod's logs): log bytes done, rate
    /// and ETA this often, and warn when no byte has arrived for longer
    /// than --timeout. Zero turns the lines off.
    #[arg(long, env = "QSYNC_PROGRESS_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub progress_interval: Duration,
}

/// The publisher's public keys a reader pins.
#[derive(Args, Debug)]
pub struct PublicKeys {
    /// The publisher's minisign public key: a .pub file or the RW... key.
    /// Repeatable (env: comma-separated): a signature by any of them is
    /// accepted, for a key rotation.
    #[arg(
        long = "public-key",
        value_name = "KEY",
        env = "QSYNC_PUBLIC_KEY",
        value_delimiter = ',',
        required = true
    )]
    pub public_keys: Vec<String>,
}

impl PublicKeys {
    /// The keys, loaded.
    pub fn load(&self) -> anyhow::Result<qsync_core::sign::TrustedKeys> {
        Ok(qsync_core::sign::TrustedKeys::load(&self.public_keys)?)
    }
}

/// How to reach remote stores when reading.
#[derive(Args, Debug)]
pub struct Remote {
    /// Bearer token sent to HTTP stores (a `qsync serve --token-file` mirror).
    #[arg(long, env = "QSYNC_HTTP_TOKEN", hide_env_values = true)]
    pub http_token: Option<String>,
    /// CloudFront key pair (public key) ID for signing requests to a private distribution.
    #[arg(
        long,
        env = "QSYNC_CLOUDFRONT_KEY_PAIR_ID",
        requires = "cloudfront_private_key"
    )]
    pub cloudfront_key_pair_id: Option<String>,
    /// PEM RSA private key of that key pair; https:// stores get canned-policy signed URLs.
    #[arg(
        long,
        env = "QSYNC_CLOUDFRONT_PRIVATE_KEY",
        requires = "cloudfront_key_pair_id"
    )]
    pub cloudfront_private_key: Option<PathBuf>,
    /// S3 settings.
    #[command(flatten)]
    pub s3: S3Flags,
    /// IPFS gateway for ipfs://CID stores.
    #[arg(long, env = "QSYNC_IPFS_GATEWAY", default_value = qsync_store::open::DEFAULT_IPFS_GATEWAY)]
    pub ipfs_gateway: String,
    /// Kubo RPC API (e.g. http://127.0.0.1:5001) to read ipfs://CID stores with `cat` instead of a gateway.
    #[arg(long, env = "QSYNC_IPFS_API")]
    pub ipfs_api: Option<String>,
}

impl Remote {
    /// As store options.
    pub fn options(&self) -> anyhow::Result<qsync_store::StoreOptions> {
        let url_signer = match (&self.cloudfront_key_pair_id, &self.cloudfront_private_key) {
            (Some(id), Some(pem)) => Some(std::sync::Arc::new(qsync_store::url_signer::UrlSigner::load(
                id, pem,
            )?)),
            _ => None,
        };
        Ok(qsync_store::StoreOptions {
            http_token: self.http_token.clone(),
            url_signer,
            s3: self.s3.options(),
            ipfs_gateway: Some(self.ipfs_gateway.clone()),
            ipfs_api: self.ipfs_api.clone(),
            edge_cache: None,
        })
    }
}

/// How to reach S3 stores (credentials and region come from the standard
/// AWS environment: AWS_* variables, profiles, IRSA, instance metadata).
#[derive(Args, Debug)]
pub struct S3Flags {
    /// Endpoint of an S3-compatible server (MinIO, Garage, Ceph, R2);
    /// AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL are honoured too.
    #[arg(long, env = "QSYNC_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Path-style addressing (ENDPOINT/BUCKET/KEY), which most S3-compatible servers need.
    #[arg(long, env = "QSYNC_S3_PATH_STYLE", value_parser = clap::builder::BoolishValueParser::new())]
    pub s3_path_style: bool,
    /// `requester` to read or write a requester-pays bucket (you pay for the requests and transfer).
    #[arg(long, env = "QSYNC_REQUEST_PAYER")]
    pub request_payer: Option<RequestPayer>,
}

/// Who pays for S3 requests.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestPayer {
    /// The requester (x-amz-request-payer: requester).
    Requester,
}

impl S3Flags {
    /// As S3 options.
    pub fn options(&self) -> qsync_store::s3::S3Options {
        qsync_store::s3::S3Options {
            endpoint: self.s3_endpoint.clone(),
            path_style: self.s3_path_style,
            requester_pays: self.request_payer.is_some(),
            ..Default::default()
        }
    }
}

/// How long chunk requests may take.
#[derive(Args, Debug)]
pub struct Timeouts {
    /// Longest one request to a mirror may take before it counts as failed.
    #[arg(long, env = "QSYNC_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Longest one chunk may take across all mirrors and retries before the run fails.
    #[arg(long, env = "QSYNC_DEADLINE", default_value = "10m", value_parser = humantime::parse_duration)]
    pub deadline: Duration,
}

/// `qsync verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Store to check.
    #[arg(long = "from", env = "QSYNC_FROM")]
    pub from: String,
    /// The publisher's public keys.
    #[command(flatten)]
    pub keys: PublicKeys,
    /// Chain to check.
    #[arg(long, env = "QSYNC_CHAIN")]
    pub chain: String,
    /// Mirror timeouts.
    #[command(flatten)]
    pub timeouts: Timeouts,
    /// Remote store settings.
    #[command(flatten)]
    pub remote: Remote,
    /// Chunks checked at once.
    #[arg(long, env = "QSYNC_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// Audit this data directory instead of the store: every file against
    /// the snapshot its completion marker names or the one --snapshot-version names;
    /// missing, changed and extra files are listed and the exit code is 7.
    #[arg(long, env = "QSYNC_DEST")]
    pub dest: Option<PathBuf>,
    /// With --dest: trust a file whose size and stat are what the last
    /// restore's index recorded, hashing only the others.
    #[arg(long, requires = "dest")]
    pub fast: bool,
    /// With --dest: audit against this version (which the pointer must
    /// still keep) instead of the one the marker names.
    #[arg(long, env = "QSYNC_SNAPSHOT_VERSION")]
    pub snapshot_version: Option<u64>,
    /// Print one JSON report on stdout.
    #[arg(long, env = "QSYNC_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
}

/// `qsync ls`.
#[derive(Args, Debug)]
pub struct LsArgs {
    /// Store to list.
    #[arg(long = "from", env = "QSYNC_FROM")]
    pub from: String,
    /// The publisher's public keys.
    #[command(flatten)]
    pub keys: PublicKeys,
    /// Only this chain [default: every chain in the store's catalog].
    #[arg(long, env = "QSYNC_CHAIN")]
    pub chain: Option<String>,
    /// Remote store settings.
    #[command(flatten)]
    pub remote: Remote,
    /// Print JSON on stdout.
    #[arg(long, env = "QSYNC_JSON", value_parser = clap::builder::BoolishValueParser::new())]
    pub json: bool,
}

/// `qsync serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Store to serve: a local directory, or any store URL with --cache-dir (pull-through).
    #[arg(
        long,
        env = "QSYNC_STORE",
        required_unless_present = "data",
        conflicts_with = "data"
    )]
    pub store: Option<String>,
    /// Peer mode: serve this node's restored data directory as a read-only
    /// store of the snapshot it holds (chunks read from its files and
    /// hashed; one the node has rewritten is answered 404). Needs
    /// --public-key and --chain, and the --state-dir its restore used.
    #[arg(long, env = "QSYNC_DATA", requires_all = ["public_keys", "chain"], conflicts_with = "cache_dir")]
    pub data: Option<PathBuf>,
    /// With --data: the chain the directory holds.
    #[arg(long, env = "QSYNC_CHAIN")]
    pub chain: Option<String>,
    /// With --data: the trust state directory its restore used, where the
    /// snapshot's signed objects are kept [default: as `restore`].
    #[arg(long, env = "QSYNC_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Pull-through cache directory (required for a remote --store).
    #[arg(long, env = "QSYNC_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Cache size limit, e.g. 50GiB or 512MiB; least recently used objects are evicted.
    #[arg(long, env = "QSYNC_CACHE_SIZE", default_value = "10GiB", value_parser = parse_size)]
    pub cache_size: u64,
    /// Upstream requests at once (pull-through mode).
    #[arg(long, env = "QSYNC_UPSTREAM_CONCURRENCY", default_value_t = 16)]
    pub upstream_concurrency: usize,
    /// Remote upstream settings.
    #[command(flatten)]
    pub remote: Remote,
    /// Address to listen on (port 0 picks a free port; the URL is printed).
    #[arg(long, env = "QSYNC_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Publisher's public key; enables /tar/<chain>/<version> streams, checked
    /// against it, and long caching of verified signatures. Repeatable (env:
    /// comma-separated).
    #[arg(
        long = "public-key",
        value_name = "KEY",
        env = "QSYNC_PUBLIC_KEY",
        value_delimiter = ','
    )]
    pub public_keys: Vec<String>,
    /// File of bearer tokens, one per line; requests must carry one (except /healthz).
    #[arg(long, env = "QSYNC_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Client networks allowed (repeatable, e.g. 10.0.0.0/8); others get 403.
    #[arg(long = "allow", env = "QSYNC_ALLOW", value_delimiter = ',')]
    pub allow: Vec<String>,
    /// Cache max-age for pointers and the catalog (chunks and manifests are immutable).
    #[arg(long, env = "QSYNC_POINTER_MAX_AGE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub pointer_max_age: Duration,
    /// Longest time to start answering an object request.
    #[arg(long, env = "QSYNC_REQUEST_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Longest wait for a client's request head, and longest an idle keep-alive connection stays open.
    #[arg(long, env = "QSYNC_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// A client that accepts no response bytes for this long is disconnected.
    #[arg(long, env = "QSYNC_SEND_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub send_timeout: Duration,
    /// Connections open at once; at the cap new ones wait until one closes.
    #[arg(long, env = "QSYNC_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Memory for chunks of all /tar streams together (shared fairly), e.g. 256MiB; at least 16MiB.
    #[arg(long, env = "QSYNC_TAR_MEMORY", default_value = "256MiB", value_parser = parse_size)]
    pub tar_memory: u64,
}

/// Parses `512MiB`, `10GiB`, `2T` or plain bytes (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 512MiB or 10GiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use KiB, MiB, GiB or TiB)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `qsync demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Working directory [default: a temporary directory, removed afterwards].
    #[arg(long, env = "QSYNC_DEMO_DIR")]
    pub dir: Option<PathBuf>,
    /// Size of the generated chain data, MiB.
    #[arg(long, env = "QSYNC_DEMO_SIZE_MIB", default_value_t = 256)]
    pub size_mib: u64,
}

/// `qsync sample`.
#[derive(Args, Debug)]
pub struct SampleArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: SampleAction,
}

/// `qsync sample` actions.
#[derive(Subcommand, Debug)]
pub enum SampleAction {
    /// Write a fresh chain-like directory.
    Generate {
        /// Directory to create.
        #[arg(long)]
        dir: PathBuf,
        /// Approximate size, MiB.
        #[arg(long, default_value_t = 256)]
        size_mib: u64,
        /// Instead of a database of large tables, this many small files of
        /// 4-64 KiB (a goleveldb, account or blob store).
        #[arg(long, default_value_t = 0)]
        small_files: u64,
        /// Largest small file, KiB (the smallest is 1/16 of it).
        #[arg(long, default_value_t = 64)]
        small_max_kib: u64,
        /// Random seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Advance a sample directory like a syncing node (compaction, log growth).
    Mutate {
        /// Directory made by `generate`.
        #[arg(long)]
        dir: PathBuf,
        /// Share of the bytes to change, percent.
        #[arg(long, default_value_t = 5.0)]
        percent: f64,
        /// Random seed.
        #[arg(long, default_value_t = 2)]
        seed: u64,
    },
}
