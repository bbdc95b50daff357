//! CloudFront: `snapshot --cloudfront-distribution-id` invalidates exactly
//! the paths it rewrote (against moto's CloudFront API on loopback), and the
//! signed-URL signer produces byte-for-byte what AWS's own signer (botocore's
//! `CloudFrontSigner`) produces for the same key, URL and expiry.

mod common;

use std::process::Command;

use common::moto::Moto;
use common::s3::*;
use common::*;
use qsync_store::url_signer::UrlSigner;
use serde_json::Value;

fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed (run ./scripts/test.sh, which installs moto[server]): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

const CLIENT: &str = r#"
import boto3, sys
cf = boto3.client("cloudfront", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="x", aws_secret_access_key="x")
"#;

const CREATE_DISTRIBUTION: &str = r#"
origin = {"Id": "s3", "DomainName": "qsync-bucket.s3.amazonaws.com",
          "S3OriginConfig": {"OriginAccessIdentity": ""}}
config = {"CallerReference": "qsync-test", "Comment": "", "Enabled": True,
          "Origins": {"Quantity": 1, "Items": [origin]},
          "DefaultCacheBehavior": {"TargetOriginId": "s3", "ViewerProtocolPolicy": "https-only",
              "MinTTL": 0, "TrustedSigners": {"Enabled": False, "Quantity": 0},
              "ForwardedValues": {"QueryString": False, "Cookies": {"Forward": "none"}}}}
print(cf.create_distribution(DistributionConfig=config)["Distribution"]["Id"])
"#;

const INVALIDATIONS: &str = r#"
import json
dist = sys.argv[2]
items = cf.list_invalidations(DistributionId=dist)["InvalidationList"].get("Items", [])
print(json.dumps([sorted(cf.get_invalidation(DistributionId=dist, Id=i["Id"])
    ["Invalidation"]["InvalidationBatch"]["Paths"]["Items"]) for i in items]))
"#;

#[test]
fn snapshot_invalidates_exactly_the_rewritten_pointer_paths() {
    let env = Env::new();
    let s3 = S3Server::start(&env.path("s3"));
    let moto = Moto::bare();
    let dist = python(&format!("{CLIENT}{CREATE_DISTRIBUTION}"), &[&moto.endpoint]);
    let invalidations = || -> Vec<Vec<String>> {
        let mut v: Vec<Vec<String>> = serde_json::from_str(&python(
            &format!("{CLIENT}{INVALIDATIONS}"),
            &[&moto.endpoint, &dist],
        ))
        .unwrap();
        v.sort_by_key(|paths| paths.len());
        v
    };
    let src = env.path("src");
    sample(&src, 2);
    let publish = || {
        let mut c = qsync();
        c.args([
            "snapshot",
            "--chain",
            "eth",
            "--json",
            "--store",
            &s3.url("mainnet"),
        ])
        .args(["--cloudfront-distribution-id", &dist])
        .arg("--source")
        .arg(&src)
        .arg("--secret-key")
        .arg(&env.sk);
        aws_env(&mut c, &s3.endpoint).env("AWS_ENDPOINT_URL_CLOUDFRONT", &moto.endpoint);
        let (code, out, err) = run(c);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert!(v["cloudfront_invalidation"].is_string(), "{v} {err}");
        v
    };
    // The first snapshot of a chain also rewrites the catalog.
    publish();
    assert_eq!(
        invalidations(),
        vec![vec!["/mainnet/catalog.json", "/mainnet/chains/eth/latest.json"]]
    );
    // Later ones only the pointer; chunks, manifests and signatures never change.
    publish();
    assert_eq!(
        invalidations(),
        vec![
            vec!["/mainnet/chains/eth/latest.json"],
            vec!["/mainnet/catalog.json", "/mainnet/chains/eth/latest.json"],
        ]
    );
}

const BOTOCORE_SIGNER: &str = r#"
import sys, datetime
from botocore.signers import CloudFrontSigner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
open(sys.argv[1], "wb").write(key.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
signer = CloudFrontSigner(sys.argv[2], lambda m: key.sign(m, padding.PKCS1v15(), hashes.SHA1()))
expires = datetime.datetime.fromtimestamp(int(sys.argv[4]), tz=datetime.timezone.utc)
print(signer.generate_presigned_url(sys.argv[3], date_less_than=expires))
"#;

#[test]
fn signed_urls_match_aws_reference_signer() {
    let env = Env::new();
    let pem = env.path("cf.pem");
    let url = "https://d111111abcdef8.cloudfront.net/mainnet/chunks/ab/ab12";
    let expected = python(
        BOTOCORE_SIGNER,
        &[pem.to_str().unwrap(), "K2JCJMDEHXQW5F", url, "1767225600"],
    );
    let signer = UrlSigner::load("K2JCJMDEHXQW5F", &pem).unwrap();
    assert_eq!(signer.sign_until(url, 1_767_225_600), expected);
    assert!(expected.contains("Key-Pair-Id=K2JCJMDEHXQW5F"), "{expected}");

    // Through the CLI: a bad key is refused with its path named.
    std::fs::write(env.path("bad.pem"), "nonsense").unwrap();
    let mut c = env.restore_cmd(
        "https://d111111abcdef8.cloudfront.net/mainnet",
        "eth",
        &env.path("d"),
    );
    c.args([
        "--cloudfront-key-pair-id",
        "K2JCJMDEHXQW5F",
        "--cloudfront-private-key",
    ])
    .arg(env.path("bad.pem"));
    let (code, _, err) = run(c);
    assert_ne!(code, 0);
    assert!(err.contains("bad.pem") && err.contains("RSA"), "{err}");
}
