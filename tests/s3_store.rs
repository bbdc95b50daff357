//! The S3 backend's own contract against a real S3 server (s3s-fs, checking
//! SigV4): conditional writes let exactly one writer win, large objects go
//! up in parts and read back whole and by range, and size limits hold.
//!
//! The only test in its binary: the SDK reads credentials from the process
//! environment, which is set here before any thread could read it.

mod common;

use bytes::Bytes;
use common::s3::*;
use common::*;
use qsync_core::ObjectKey;
use qsync_store::s3::{S3Options, S3Store, MULTIPART_THRESHOLD};
use qsync_store::{Expect, ObjectSink, ObjectSource, PutOptions, StoreError, StoreUrl};

#[test]
fn conditional_writes_and_multipart_uploads() {
    let env = Env::new();
    let s3 = S3Server::start(&env.path("s3"));
    let mut c = std::process::Command::new("true");
    aws_env(&mut c, &s3.endpoint);
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => std::env::set_var(k, v),
            None => std::env::remove_var(k),
        }
    }
    let opts = S3Options {
        endpoint: Some(s3.endpoint.clone()),
        path_style: true,
        ..S3Options::default()
    };
    let at = match StoreUrl::parse(&s3.url("api")).unwrap() {
        StoreUrl::S3(at) => at,
        other => panic!("{other:?}"),
    };
    let store = S3Store::new(at, opts);
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let key = ObjectKey::new("chains/eth/latest.json").unwrap();
        let opts = PutOptions::for_key(&key);
        let put_if = |body: &'static [u8], expect: Expect| {
            let (store, key) = (&store, &key);
            async move { store.put_if(key, Bytes::from_static(body), opts, &expect).await }
        };
        put_if(b"one", Expect::Absent).await.unwrap();
        let err = put_if(b"two", Expect::Absent).await;
        assert!(matches!(err, Err(StoreError::Conflict { .. })), "{err:?}");
        let (body, v1) = store.get_versioned(&key, 1 << 20).await.unwrap().unwrap();
        assert_eq!(body, Bytes::from_static(b"one"));
        put_if(b"three", Expect::Version(v1.clone())).await.unwrap();
        // A second writer that read version one loses and changes nothing.
        let err = put_if(b"four", Expect::Version(v1)).await;
        assert!(matches!(err, Err(StoreError::Conflict { .. })), "{err:?}");
        assert_eq!(store.get(&key).await.unwrap(), Bytes::from_static(b"three"));

        // Larger than the multipart threshold: uploaded in parts, read back
        // whole and by range.
        let big = Bytes::from(noise(MULTIPART_THRESHOLD * 2 + 12345, 5));
        let chunk = ObjectKey::new("chunks/ab/big").unwrap();
        store
            .put(&chunk, big.clone(), PutOptions::for_key(&chunk))
            .await
            .unwrap();
        assert_eq!(store.get(&chunk).await.unwrap(), big);
        assert_eq!(
            store.get_range(&chunk, 100..200).await.unwrap(),
            big.slice(100..200)
        );
        assert_eq!(store.head(&chunk).await.unwrap().unwrap().size, big.len() as u64);
        let absent = ObjectKey::new("chunks/ab/none").unwrap();
        assert!(store.head(&absent).await.unwrap().is_none());
        let limited = store.get_limited(&chunk, 1000).await;
        assert!(matches!(limited, Err(StoreError::TooLarge { .. })), "{limited:?}");
    });
}
