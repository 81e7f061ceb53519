//! `s3://bucket/prefix` through aws-sdk-s3: only calls that AWS, MinIO,
//! Garage, R2 and Tigris all serve (GetObject with Range, PutObject with
//! If-None-Match / If-Match, multipart upload, HeadObject, DeleteObject,
//! ListObjectsV2).
//!
//! Configuration is the AWS SDK's own: credentials from the default chain
//! (environment, profile, instance metadata), region from `AWS_REGION`
//! (default us-east-1), endpoint from `AWS_ENDPOINT_URL`; with an explicit
//! endpoint, path-style addressing (what S3-compatible servers expect)
//! unless `SPRITEDISK_S3_VIRTUAL_HOSTED=1`. Checksums are only sent where an
//! API requires them: several compatible servers reject the SDK's newer
//! default trailing checksums.
//!
//! Ambiguous conditional PUTs: every object carries a unique
//! `x-amz-meta-spritedisk-put-id`; when a retried conditional PUT is refused
//! (412) the object is read back with HEAD, and if it carries our id the
//! first attempt landed and the PUT succeeded.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::OnceCell;

use crate::{check_key, ObjectMeta, ObjectStore, StoreError};

/// Plain PUTs above this go up in parts (S3 allows 5 GiB in one PUT, but
/// parts upload in parallel and a failed part is retried alone).
pub const MULTIPART_THRESHOLD_BYTES: usize = 64 << 20;
const PART_BYTES: usize = 16 << 20;
/// Parts of one multipart upload in flight at once.
const PARTS_INFLIGHT_MAX: usize = 4;
const PUT_ID_META: &str = "spritedisk-put-id";
/// One HTTP attempt may take this long (a stalled server counts as a
/// timeout, which the caller retries); connecting, this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct S3Store {
    bucket: String,
    /// Key prefix of the volume, with a trailing `/` (or empty).
    prefix: String,
    /// Where requests go, for messages.
    endpoint: String,
    explicit_endpoint: Option<String>,
    client: OnceCell<Client>,
}

impl S3Store {
    pub fn new(bucket: &str, prefix: &str) -> S3Store {
        S3Store::new_at(bucket, prefix, None)
    }

    /// Like [`S3Store::new`], at an explicit endpoint (path-style) instead
    /// of the environment's.
    pub fn new_at(bucket: &str, prefix: &str, endpoint: Option<String>) -> S3Store {
        let prefix = prefix.trim_matches('/');
        S3Store {
            bucket: bucket.to_string(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            explicit_endpoint: endpoint.clone(),
            endpoint: endpoint
                .or_else(|| std::env::var("AWS_ENDPOINT_URL_S3").ok())
                .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok())
                .unwrap_or_else(|| "the AWS S3 endpoint of the region".into()),
            client: OnceCell::new(),
        }
    }

    /// The client, configured from the environment on first use; after
    /// [`share_client`], one for every such store of the process.
    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                match self.explicit_endpoint {
                    None if SHARE_CLIENT.load(Ordering::Relaxed) => {
                        SHARED.get_or_init(|| self.build_client()).await.clone()
                    }
                    _ => self.build_client().await,
                }
            })
            .await
    }

    async fn build_client(&self) -> Client {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(
                aws_config::meta::region::RegionProviderChain::default_provider()
                    .or_else("us-east-1"),
            )
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            )
            .load()
            .await;
        let explicit_endpoint = self.explicit_endpoint.is_some()
            || std::env::var_os("AWS_ENDPOINT_URL").is_some()
            || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
        let virtual_hosted = std::env::var("SPRITEDISK_S3_VIRTUAL_HOSTED").as_deref() == Ok("1");
        let mut conf = aws_sdk_s3::config::Builder::from(&shared);
        if let Some(ep) = &self.explicit_endpoint {
            conf = conf.endpoint_url(ep);
        }
        let conf = conf
            .force_path_style(explicit_endpoint && !virtual_hosted)
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .build();
        Client::from_conf(conf)
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix.trim_end_matches('/'))
    }

    /// Maps an SDK error to ours, naming the operation, the key and the cause.
    fn err<E>(&self, op: &'static str, key: &str, e: SdkError<E>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = e.raw_response().map(|r| r.status().as_u16());
        let code = e.code().unwrap_or("").to_string();
        let at = format!("{}/{key}", self.url());
        match (&e, status) {
            (_, Some(412)) => return StoreError::PreconditionFailed(key.to_string()),
            (_, Some(404)) if code == "NoSuchBucket" => {
                return StoreError::Remote {
                    op,
                    key: at,
                    detail: format!("bucket {:?} does not exist (NoSuchBucket)", self.bucket),
                    transient: false,
                }
            }
            (_, Some(404)) => return StoreError::NotFound(key.to_string()),
            _ => {}
        }
        let (detail, transient) = match (&e, status) {
            (_, Some(403)) => (
                format!(
                    "access denied (HTTP 403 {code}): check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or profile) and the bucket policy"
                ),
                false,
            ),
            (_, Some(400)) if code == "InvalidAccessKeyId" || code == "AuthorizationHeaderMalformed" => (
                format!("credentials rejected (HTTP 400 {code})"),
                false,
            ),
            // AWS answers a concurrent conditional write with 409: retry.
            (_, Some(s)) if s == 409 || s == 429 || s >= 500 => {
                (format!("HTTP {s} {code}: {}", e.message().unwrap_or("")), true)
            }
            (_, Some(s)) if code.is_empty() => (format!("HTTP {s}: {}", DisplayChain(&e)), (200..300).contains(&s)),
            (_, Some(s)) => (format!("HTTP {s} {code}: {}", e.message().unwrap_or("")), false),
            (SdkError::TimeoutError(_), _) => ("timed out".to_string(), true),
            (SdkError::DispatchFailure(d), _) => {
                let msg = format!("{}", DisplayChain(&e));
                if d.is_user() || msg.contains("credentials") {
                    (format!("cannot sign the request: {msg} (no AWS credentials? set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or a profile)"), false)
                } else {
                    (format!("cannot reach the endpoint {}: {msg} (check AWS_ENDPOINT_URL)", self.endpoint), true)
                }
            }
            (SdkError::ResponseError(_), _) => (format!("bad response: {}", DisplayChain(&e)), true),
            (SdkError::ConstructionFailure(_), _) => (
                format!("cannot build the request: {} (no AWS credentials? set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or a profile)", DisplayChain(&e)),
                false,
            ),
            _ => (DisplayChain(&e).to_string(), true),
        };
        StoreError::Remote {
            op,
            key: at,
            detail,
            transient,
        }
    }

    /// Reads a GET's body; a connection lost mid-body is worth a retry.
    async fn body(&self, key: &str, body: ByteStream) -> Result<Bytes, StoreError> {
        match body.collect().await {
            Ok(b) => Ok(b.into_bytes()),
            Err(e) => Err(StoreError::Remote {
                op: "get",
                key: format!("{}/{key}", self.url()),
                detail: format!("reading the body: {e}"),
                transient: true,
            }),
        }
    }

    /// After a refused conditional PUT: did our own earlier attempt land?
    async fn landed(&self, key: &str, put_id: &str) -> Option<String> {
        let h = self
            .client()
            .await
            .head_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
            .ok()?;
        let ours = h
            .metadata()
            .and_then(|m| m.get(PUT_ID_META))
            .map(String::as_str)
            == Some(put_id);
        ours.then(|| h.e_tag().unwrap_or_default().to_string())
    }

    async fn put_conditional(
        &self,
        key: &str,
        data: Bytes,
        if_none_match: bool,
        if_match: Option<&str>,
    ) -> Result<String, StoreError> {
        check_key(key)?;
        let put_id = uuid::Uuid::new_v4().to_string();
        let mut req = self
            .client()
            .await
            .put_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .metadata(PUT_ID_META, &put_id)
            .body(ByteStream::from(data));
        if if_none_match {
            req = req.if_none_match("*");
        }
        if let Some(etag) = if_match {
            req = req.if_match(etag);
        }
        match req.send().await {
            Ok(o) => Ok(o.e_tag().unwrap_or_default().to_string()),
            Err(e) => match self.err("put", key, e) {
                StoreError::PreconditionFailed(k) => match self.landed(key, &put_id).await {
                    Some(etag) => Ok(etag),
                    None => Err(StoreError::PreconditionFailed(k)),
                },
                // If-Match on a missing key: AWS and moto say 404, others 412.
                StoreError::NotFound(k) if if_match.is_some() => {
                    Err(StoreError::PreconditionFailed(k))
                }
                other => Err(other),
            },
        }
    }

    async fn put_multipart(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        let c = self.client().await;
        let full = self.full(key);
        let put_id = uuid::Uuid::new_v4().to_string();
        let up = c
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .metadata(PUT_ID_META, &put_id)
            .send()
            .await
            .map_err(|e| self.err("put", key, e))?;
        let upload_id = up.upload_id().unwrap_or_default().to_string();
        let parts: Vec<(i32, Bytes)> = (0..data.len().div_ceil(PART_BYTES))
            .map(|i| {
                let end = ((i + 1) * PART_BYTES).min(data.len());
                (i as i32 + 1, data.slice(i * PART_BYTES..end))
            })
            .collect();
        use futures::{StreamExt, TryStreamExt};
        let res: Result<Vec<CompletedPart>, StoreError> = futures::stream::iter(parts)
            .map(|(n, body)| {
                let (c, full, upload_id) = (c.clone(), full.clone(), upload_id.clone());
                async move {
                    let r = c
                        .upload_part()
                        .bucket(&self.bucket)
                        .key(&full)
                        .upload_id(&upload_id)
                        .part_number(n)
                        .body(ByteStream::from(body))
                        .send()
                        .await
                        .map_err(|e| self.err("put part", key, e))?;
                    Ok(CompletedPart::builder()
                        .part_number(n)
                        .set_e_tag(r.e_tag().map(str::to_string))
                        .build())
                }
            })
            .buffered(PARTS_INFLIGHT_MAX)
            .try_collect()
            .await;
        let done = match res {
            Ok(parts) => c
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| self.err("put", key, e)),
            Err(e) => Err(e),
        };
        match done {
            Ok(o) => Ok(o.e_tag().unwrap_or_default().to_string()),
            // An answer we could not read (moto names its reply's root
            // element differently): the object tells whether it completed.
            Err(e) if self.landed(key, &put_id).await.is_some() => {
                tracing::debug!(key, error = %e, "multipart completion answer unreadable, but the object is ours");
                Ok(self.landed(key, &put_id).await.unwrap_or_default())
            }
            Err(e) => {
                let _ = c
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&full)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                Err(e)
            }
        }
    }
}

/// An error with its sources, on one line.
struct DisplayChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut src = self.0.source();
        while let Some(s) = src {
            write!(f, ": {s}")?;
            src = s.source();
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        check_key(key)?;
        let o = self
            .client()
            .await
            .get_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
            .map_err(|e| self.err("get", key, e))?;
        self.body(key, o.body).await
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        check_key(key)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let res = self
            .client()
            .await
            .get_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .range(format!("bytes={offset}-{}", offset + len - 1))
            .send()
            .await;
        let o = match res {
            Ok(o) => o,
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 416) => {
                let size = self.head(key).await?.map_or(0, |m| m.size);
                return Err(StoreError::OutOfRange {
                    key: key.to_string(),
                    offset,
                    len,
                    size,
                });
            }
            Err(e) => return Err(self.err("get", key, e)),
        };
        let size = o
            .content_range()
            .and_then(|r| r.rsplit('/').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let b = self.body(key, o.body).await?;
        // S3 clips a range that runs past the end instead of refusing it.
        if b.len() as u64 != len {
            return Err(StoreError::OutOfRange {
                key: key.to_string(),
                offset,
                len,
                size,
            });
        }
        Ok(b)
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        check_key(key)?;
        if data.len() > MULTIPART_THRESHOLD_BYTES {
            return self.put_multipart(key, data).await;
        }
        self.put_conditional(key, data, false, None).await
    }

    async fn put_if_absent(&self, key: &str, data: Bytes) -> Result<String, StoreError> {
        self.put_conditional(key, data, true, None).await
    }

    async fn put_if_match(&self, key: &str, data: Bytes, etag: &str) -> Result<String, StoreError> {
        self.put_conditional(key, data, false, Some(etag)).await
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        check_key(key)?;
        match self
            .client()
            .await
            .head_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
        {
            Ok(h) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: h.content_length().unwrap_or(0).max(0) as u64,
                etag: h.e_tag().unwrap_or_default().to_string(),
            })),
            Err(e) => match self.err("head", key, e) {
                StoreError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        self.client()
            .await
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
            .map(|_| ())
            .or_else(|e| match self.err("delete", key, e) {
                StoreError::NotFound(_) => Ok(()),
                other => Err(other),
            })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut out = vec![];
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client()
                .await
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(self.full(prefix))
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.err("list", prefix, e))?;
            for o in page.contents() {
                let Some(k) = o.key().and_then(|k| k.strip_prefix(&self.prefix)) else {
                    continue;
                };
                out.push(ObjectMeta {
                    key: k.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: o.e_tag().unwrap_or_default().to_string(),
                });
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn describe(&self) -> String {
        self.url()
    }
}

static SHARE_CLIENT: AtomicBool = AtomicBool::new(false);
static SHARED: OnceCell<Client> = OnceCell::const_new();

/// From now on, the stores this process opens from the environment share
/// one client, and so its open connections: a warm-pool daemon connects
/// before it knows its volume ([`crate::warm_up`]) and the volume bound
/// later reuses the connection. Only for a process with one tokio runtime
/// for its whole life (a client's connections belong to the runtime that
/// opened them), hence not the default.
pub fn share_client() {
    SHARE_CLIENT.store(true, Ordering::Relaxed);
}

/// Opens `s3://bucket/prefix`.
pub fn open(bucket: &str, prefix: &str) -> Arc<dyn ObjectStore> {
    Arc::new(S3Store::new(bucket, prefix))
}
