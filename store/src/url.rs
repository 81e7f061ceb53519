//! Parsing of volume URLs into a store.

use std::path::PathBuf;
use std::sync::Arc;

use crate::{FileStore, ObjectStore, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    File(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad(
                    "a file:// URL needs an absolute path, e.g. file:///var/lib/spritedisk/vol1",
                ));
            }
            let path = path.trim_end_matches('/');
            if path.is_empty() {
                return Err(bad("the volume cannot be the root directory"));
            }
            return Ok(StoreUrl::File(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("an s3:// URL needs a bucket, e.g. s3://bucket/prefix"));
            }
            return Ok(StoreUrl::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_end_matches('/').to_string(),
            });
        }
        match url.split_once("://") {
            Some((scheme, _)) => Err(bad(&format!(
                "unsupported scheme {scheme:?}: use file:///path or s3://bucket/prefix"
            ))),
            None => Err(bad(
                "not a URL: use file:///path/to/dir or s3://bucket/prefix",
            )),
        }
    }
}

/// Opens the store a volume URL names. `file://` directories are created on demand.
pub fn open_url(url: &str) -> Result<Arc<dyn ObjectStore>, StoreError> {
    match StoreUrl::parse(url)? {
        StoreUrl::File(path) => Ok(Arc::new(FileStore::new(path))),
        StoreUrl::S3 { bucket, prefix } => Ok(crate::s3::open(&bucket, &prefix)),
    }
}

/// Opens the store of `url` and makes one request to it, so that a daemon
/// that will serve a volume there later has its client built, its
/// credentials loaded and a connection open (with [`crate::share_s3_client`]).
/// A LIST of a key nobody writes: the answer is empty, and a missing
/// bucket or a refused credential is an error that names the cause (a HEAD
/// would report a missing bucket as a missing key).
pub async fn warm_up(url: &str) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let store = open_url(url)?;
    store.list("spritedisk-warm-up/").await?;
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(
            StoreUrl::parse("file:///a/b/").unwrap(),
            StoreUrl::File("/a/b".into())
        );
        assert_eq!(
            StoreUrl::parse("s3://bk/p/q").unwrap(),
            StoreUrl::S3 {
                bucket: "bk".into(),
                prefix: "p/q".into()
            }
        );
        for (u, needle) in [
            ("file://rel/path", "absolute path"),
            ("http://x", "unsupported scheme"),
            ("/just/a/path", "not a URL"),
            ("s3:///x", "needs a bucket"),
            ("file:///", "root directory"),
        ] {
            let e = StoreUrl::parse(u).unwrap_err().to_string();
            assert!(e.contains(needle), "{u}: {e}");
        }
    }
}
