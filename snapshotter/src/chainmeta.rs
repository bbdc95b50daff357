//! The head block a snapshot holds, asked from the node's RPC (Ethereum,
//! Substrate, CometBFT) or from an operator's command, and recorded in the
//! manifest so fetchers and `--verify-cmd` checks can compare against it.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::{MetadataConfig, RpcKind};

/// Height and hash of the head block.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ChainHead {
    /// Block height.
    #[serde(deserialize_with = "height")]
    pub height: u64,
    /// Block hash as the node writes it.
    pub block_hash: String,
}

fn height<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let v = Value::deserialize(d)?;
    number(&v).ok_or_else(|| serde::de::Error::custom(format!("height {v} is not a block number")))
}

/// A number, a decimal string or a `0x` hex string.
fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        },
        _ => None,
    }
}

/// Why the head block could not be learnt.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// Neither the RPC nor the command answered in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// `[chain.metadata]` names no way to ask.
    #[error("[chain.metadata] names neither rpc nor command")]
    NotConfigured,
    /// The request failed or the node answered with an error.
    #[error("{what} at {url}: {reason}")]
    Rpc {
        /// The method or path asked.
        what: String,
        /// The node's URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The node answered, but not with a head.
    #[error("{url} answered {what} without a usable head: {answer}")]
    NoHead {
        /// The method or path asked.
        what: &'static str,
        /// The node's URL.
        url: String,
        /// The answer.
        answer: String,
    },
    /// The metadata command failed or printed something else.
    #[error("metadata command {command:?} {reason}")]
    Command {
        /// The command line.
        command: String,
        /// What went wrong.
        reason: String,
    },
}

/// Asks the node (or runs the command) for its head.
pub async fn query(cfg: &MetadataConfig) -> Result<ChainHead, MetadataError> {
    match tokio::time::timeout(cfg.timeout, query_inner(cfg)).await {
        Ok(r) => r,
        Err(_) => Err(MetadataError::Timeout(cfg.timeout)),
    }
}

async fn query_inner(cfg: &MetadataConfig) -> Result<ChainHead, MetadataError> {
    if !cfg.command.is_empty() {
        return from_command(&cfg.command).await;
    }
    let (Some(url), Some(kind)) = (&cfg.rpc, cfg.kind) else {
        return Err(MetadataError::NotConfigured);
    };
    let failed = |what: &str, reason: String| MetadataError::Rpc {
        what: what.into(),
        url: url.clone(),
        reason,
    };
    let client = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .build()
        .map_err(|e| failed("building a client", e.to_string()))?;
    let rpc = |method: &'static str, params: Value| {
        let client = client.clone();
        async move {
            let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
            let v = fetch_json(
                client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body.to_string()),
                |e| failed(method, e),
            )
            .await?;
            if let Some(err) = v.get("error") {
                return Err(failed(method, err.to_string()));
            }
            Ok::<Value, MetadataError>(v["result"].clone())
        }
    };
    let bad = |what: &'static str, v: &Value| MetadataError::NoHead {
        what,
        url: url.clone(),
        answer: v.to_string(),
    };
    match kind {
        RpcKind::Ethereum => {
            let b = rpc("eth_getBlockByNumber", json!(["latest", false])).await?;
            match (number(&b["number"]), b["hash"].as_str()) {
                (Some(height), Some(hash)) => Ok(ChainHead {
                    height,
                    block_hash: hash.into(),
                }),
                _ => Err(bad("eth_getBlockByNumber", &b)),
            }
        }
        RpcKind::Substrate => {
            let header = rpc("chain_getHeader", json!([])).await?;
            let height = number(&header["number"]).ok_or_else(|| bad("chain_getHeader", &header))?;
            let hash = rpc("chain_getBlockHash", json!([height])).await?;
            match hash.as_str() {
                Some(h) => Ok(ChainHead {
                    height,
                    block_hash: h.into(),
                }),
                None => Err(bad("chain_getBlockHash", &hash)),
            }
        }
        RpcKind::Cometbft => {
            let status_url = format!("{}/status", url.trim_end_matches('/'));
            let v = fetch_json(client.get(&status_url), |e| failed("/status", e)).await?;
            // CometBFT 0.38 wraps it in a JSON-RPC envelope; older builds may not.
            let info = v.get("result").unwrap_or(&v)["sync_info"].clone();
            match (
                number(&info["latest_block_height"]),
                info["latest_block_hash"].as_str(),
            ) {
                (Some(height), Some(hash)) => Ok(ChainHead {
                    height,
                    block_hash: hash.into(),
                }),
                _ => Err(bad("/status", &v)),
            }
        }
    }
}

/// Sends `req` and parses the answer as JSON (at most 1 MiB); `failed`
/// names the request in the error.
async fn fetch_json(
    req: reqwest::RequestBuilder,
    failed: impl Fn(String) -> MetadataError,
) -> Result<Value, MetadataError> {
    let resp = req
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| failed(e.to_string()))?;
    let body = resp.bytes().await.map_err(|e| failed(e.to_string()))?;
    if body.len() > 1 << 20 {
        return Err(failed("the answer is larger than 1 MiB".into()));
    }
    serde_json::from_slice(&body).map_err(|e| failed(format!("not JSON: {e}")))
}

async fn from_command(argv: &[String]) -> Result<ChainHead, MetadataError> {
    let failed = |reason: String| MetadataError::Command {
        command: argv.join(" "),
        reason,
    };
    let out = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| failed(format!("could not run: {e}")))?;
    if !out.status.success() {
        return Err(failed(format!(
            "failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        failed(format!(
            "must print {{\"height\": N, \"block_hash\": \"...\"}}: {e}"
        ))
    })
}

/// The head to record around a freeze: asked before the pre hook and again
/// while frozen. The frozen answer wins; when the node no longer answers
/// (the pre hook stopped it), the last answer before the freeze is used.
pub struct AroundFreeze {
    before: Option<Result<ChainHead, MetadataError>>,
}

impl AroundFreeze {
    /// Asks before the freeze (RPC only: a command reads the frozen data).
    pub async fn before(cfg: &MetadataConfig) -> AroundFreeze {
        let before = if cfg.command.is_empty() {
            Some(
                query(&MetadataConfig {
                    timeout: cfg.timeout.min(Duration::from_secs(10)),
                    kind: cfg.kind,
                    rpc: cfg.rpc.clone(),
                    command: Vec::new(),
                })
                .await,
            )
        } else {
            None
        };
        AroundFreeze { before }
    }

    /// Asks while frozen and picks the answer to record.
    pub async fn frozen(self, cfg: &MetadataConfig) -> Result<ChainHead, MetadataError> {
        match (query(cfg).await, self.before) {
            (Ok(h), _) => Ok(h),
            (Err(e), Some(Ok(h))) => {
                tracing::warn!(
                    "the node did not answer while frozen ({e}), as when the pre hook stops it; recording the head it reported just before the freeze, height {}",
                    h.height
                );
                Ok(h)
            }
            (Err(e), _) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_every_spelling() {
        assert_eq!(number(&json!("0x1b4")), Some(436));
        assert_eq!(number(&json!("436")), Some(436));
        assert_eq!(number(&json!(436)), Some(436));
        assert_eq!(number(&json!("zz")), None);
    }

    #[tokio::test]
    async fn command_output_is_parsed_and_failures_are_named() {
        let cfg = |cmd: &str| MetadataConfig {
            kind: None,
            rpc: None,
            command: vec!["sh".into(), "-c".into(), cmd.into()],
            timeout: Duration::from_secs(5),
        };
        let h = query(&cfg(r#"echo '{"height": "0x10", "block_hash": "0xab"}'"#))
            .await
            .unwrap();
        assert_eq!(
            h,
            ChainHead {
                height: 16,
                block_hash: "0xab".into()
            }
        );
        let e = query(&cfg("echo nope; exit 3")).await.unwrap_err();
        assert!(
            matches!(e, MetadataError::Command { .. }) && e.to_string().contains("failed"),
            "{e}"
        );
        let e = query(&cfg("echo '{}'")).await.unwrap_err();
        assert!(e.to_string().contains("must print"), "{e}");
    }
}
