//! Store URLs, parsed once into a typed value ([`StoreUrl`]) that names the
//! backend and carries its parts; [`crate::open`] maps it to a backend and
//! nothing else looks at the text again.
//!
//! - a path or `file://PATH`: a local directory, read and write;
//! - `http://` or `https://`: any static HTTP host, read-only;
//! - `s3://BUCKET/PREFIX`: an S3 bucket, read and write;
//! - `ipfs+http://HOST:PORT[/MFS/DIR]`: a directory in an IPFS node's MFS,
//!   read and write;
//! - `ipfs://CID`: a published IPFS directory, read through a gateway or
//!   the RPC API.

use std::fmt;
use std::path::PathBuf;

use qsync_core::ObjectKey;

use crate::traits::StoreError;

const SUPPORTED: &str =
    "use a directory path, file://PATH, s3://BUCKET/PREFIX, ipfs+http://HOST:PORT, ipfs://CID or http(s)://HOST/PREFIX";

/// The MFS directory of an `ipfs+http://HOST:PORT` URL that names none.
pub const DEFAULT_MFS_DIR: &str = "qsync";

/// Where a store is, by kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum StoreUrl {
    /// A local directory.
    Local(PathBuf),
    /// A static HTTP host; the base URL ends with `/`.
    Http(String),
    /// An S3 bucket and a key prefix.
    S3(S3Location),
    /// A directory in an IPFS node's MFS, reached through its RPC API.
    IpfsMfs {
        /// The RPC API's base URL, `http://HOST:PORT` (or `https://`).
        api: String,
        /// The MFS directory, a valid key without leading `/`.
        dir: String,
    },
    /// A published IPFS directory.
    IpfsCid(String),
}

/// An S3 bucket and a key prefix within it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct S3Location {
    /// The bucket's name (3-63 of a-z 0-9 . -).
    pub bucket: String,
    /// The key prefix: empty, or a valid key followed by `/`.
    pub prefix: String,
}

fn bad(url: &str, reason: impl Into<String>) -> StoreError {
    StoreError::BadUrl {
        url: url.into(),
        reason: reason.into(),
    }
}

fn scheme(url: &str) -> Option<(&str, &str)> {
    let (s, rest) = url.split_once("://")?;
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
        .then_some((s, rest))
}

impl StoreUrl {
    /// Parses a store URL; the error names the URL and what is accepted.
    pub fn parse(url: &str) -> Result<StoreUrl, StoreError> {
        match scheme(url) {
            None if url.is_empty() => Err(bad(url, format!("empty; {SUPPORTED}"))),
            None => Ok(StoreUrl::Local(url.into())),
            Some(("file", "")) => Err(bad(url, format!("no path; {SUPPORTED}"))),
            Some(("file", path)) => Ok(StoreUrl::Local(path.into())),
            Some(("http" | "https", _)) => Ok(StoreUrl::Http(if url.ends_with('/') {
                url.to_string()
            } else {
                format!("{url}/")
            })),
            Some(("s3", rest)) => S3Location::parse(url, rest).map(StoreUrl::S3),
            Some((s @ ("ipfs+http" | "ipfs+https"), rest)) => {
                let (host, dir) = rest.split_once('/').unwrap_or((rest, DEFAULT_MFS_DIR));
                let dir = match dir.trim_matches('/') {
                    "" => DEFAULT_MFS_DIR,
                    d => d,
                };
                ObjectKey::new(dir).map_err(|e| bad(url, format!("MFS directory: {e}")))?;
                if host.is_empty() {
                    return Err(bad(url, "use ipfs+http://HOST:PORT[/MFS/DIR]"));
                }
                Ok(StoreUrl::IpfsMfs {
                    api: format!("{}://{host}", &s["ipfs+".len()..]),
                    dir: dir.into(),
                })
            }
            Some(("ipfs", rest)) => {
                let cid = rest.trim_matches('/');
                if cid.is_empty() || !cid.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(bad(
                        url,
                        "use ipfs://CID, the root CID a publish printed (ipfs_root_cid)",
                    ));
                }
                Ok(StoreUrl::IpfsCid(cid.into()))
            }
            Some((other, _)) => Err(bad(
                url,
                format!("scheme {other}:// is not supported by this build; {SUPPORTED}"),
            )),
        }
    }
}

/// From the URL's text (agent configuration files), with
/// [`StoreUrl::parse`]'s error.
impl<'de> serde::Deserialize<'de> for StoreUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        StoreUrl::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A store's identity in the records kept about it between runs (which
/// manifest each store last took, which IPFS root each store pinned):
/// its URL in canonical form, with a local directory made absolute, so the
/// same store has the same id however it was spelled and from whichever
/// working directory. Serialised as that string.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct StoreId(String);

impl StoreId {
    /// The id of a store that has no URL (the in-memory test store).
    pub fn unlisted(name: &str) -> StoreId {
        StoreId(format!("unlisted:{name}"))
    }
}

impl fmt::Display for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StoreUrl {
    /// The store's [`StoreId`].
    pub fn id(&self) -> StoreId {
        match self {
            StoreUrl::Local(p) => {
                // Lexically, as the operator wrote it: `..` goes up one name.
                let mut normal = PathBuf::new();
                for c in std::path::absolute(p).unwrap_or_else(|_| p.clone()).components() {
                    match c {
                        std::path::Component::ParentDir => {
                            normal.pop();
                        }
                        c => normal.push(c),
                    }
                }
                StoreId(normal.display().to_string())
            }
            other => StoreId(other.to_string()),
        }
    }
}

/// The canonical form: parsing it gives the same value.
impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Local(p) => write!(f, "{}", p.display()),
            StoreUrl::Http(base) => f.write_str(base),
            StoreUrl::S3(l) => l.fmt(f),
            StoreUrl::IpfsMfs { api, dir } => write!(f, "ipfs+{api}/{dir}"),
            StoreUrl::IpfsCid(cid) => write!(f, "ipfs://{cid}"),
        }
    }
}

/// `s3://BUCKET/PREFIX`, the form [`StoreUrl::parse`] reads back (and
/// the S3 store's location).
impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

impl S3Location {
    fn parse(url: &str, rest: &str) -> Result<S3Location, StoreError> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
        if !valid_bucket {
            return Err(bad(
                url,
                format!("{bucket:?} is not an S3 bucket name (3-63 of a-z 0-9 . -); use s3://BUCKET/PREFIX"),
            ));
        }
        let prefix = match prefix.trim_matches('/') {
            "" => String::new(),
            p => {
                ObjectKey::new(p).map_err(|e| bad(url, format!("prefix: {e}")))?;
                format!("{p}/")
            }
        };
        Ok(S3Location {
            bucket: bucket.into(),
            prefix,
        })
    }

    /// The object name of `key`: the prefix, then the key.
    pub fn object(&self, key: &ObjectKey) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_has_one_id_however_it_is_spelled() {
        let id = |u: &str| StoreUrl::parse(u).unwrap().id();
        let cwd = std::env::current_dir().unwrap();
        let here = id(&cwd.join("store").display().to_string());
        for spelling in ["store", "./store", "store/", "./x/../store"] {
            assert_eq!(id(spelling), here, "{spelling}");
        }
        assert_eq!(id("s3://bkt/p"), id("s3://bkt/p/"));
        assert_ne!(id("s3://bkt/p"), id("s3://bkt/q"));
        assert_eq!(
            serde_json::to_string(&id("s3://bkt/p")).unwrap(),
            "\"s3://bkt/p/\""
        );
    }

    #[test]
    fn every_kind_parses_and_prints_back() {
        for (url, want) in [
            ("/tmp/x", StoreUrl::Local("/tmp/x".into())),
            ("file:///tmp/x", StoreUrl::Local("/tmp/x".into())),
            ("http://h:1/p", StoreUrl::Http("http://h:1/p/".into())),
            (
                "s3://chain-data/snapshots/",
                StoreUrl::S3(S3Location {
                    bucket: "chain-data".into(),
                    prefix: "snapshots/".into(),
                }),
            ),
            (
                "s3://chain-data",
                StoreUrl::S3(S3Location {
                    bucket: "chain-data".into(),
                    prefix: String::new(),
                }),
            ),
            (
                "ipfs+http://127.0.0.1:5001",
                StoreUrl::IpfsMfs {
                    api: "http://127.0.0.1:5001".into(),
                    dir: "qsync".into(),
                },
            ),
            (
                "ipfs+https://h:5001/snapshots/eth/",
                StoreUrl::IpfsMfs {
                    api: "https://h:5001".into(),
                    dir: "snapshots/eth".into(),
                },
            ),
            ("ipfs://bafyabc", StoreUrl::IpfsCid("bafyabc".into())),
        ] {
            let got = StoreUrl::parse(url).unwrap();
            assert_eq!(got, want, "{url}");
            assert_eq!(StoreUrl::parse(&got.to_string()).unwrap(), got, "{url}");
        }
    }

    #[test]
    fn bad_urls_say_what_is_accepted() {
        for url in [
            "",
            "file://",
            "gopher://h",
            "s3://",
            "s3://UPPER/x",
            "s3://ab",
            "s3://bucket/../x",
            "ipfs+http://h:5001/../x",
            "ipfs://",
            "ipfs://not-a-cid!",
        ] {
            let e = StoreUrl::parse(url).unwrap_err().to_string();
            assert!(
                e.contains("use ") || e.contains("prefix") || e.contains("MFS"),
                "{url}: {e}"
            );
        }
        assert!(StoreUrl::parse("gopher://h")
            .unwrap_err()
            .to_string()
            .contains("not supported"));
    }
}
