//! Bounded retries of idempotent store requests (GET, HEAD, LIST, DELETE)
//! on transient errors. Uploads have their own unbounded loop in `upload.rs`
//! because a FLUSH, not the upload, owns the deadline.

use std::future::Future;
use std::time::Duration;

use spritedisk_store::StoreError;

/// Attempts of one idempotent request before its error reaches the caller:
/// with the backoff below, about 6 s of store trouble before a read fails.
pub const STORE_READ_ATTEMPTS_MAX: u32 = 8;
const STORE_READ_BACKOFF_FIRST: Duration = Duration::from_millis(20);
const STORE_READ_BACKOFF_MAX: Duration = Duration::from_secs(2);

pub async fn retry_read<T, F, Fut>(what: &str, mut f: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut backoff = STORE_READ_BACKOFF_FIRST;
    let mut attempt = 1;
    loop {
        match f().await {
            Err(e) if e.is_transient() && attempt < STORE_READ_ATTEMPTS_MAX => {
                tracing::warn!(what, attempt, error = %e, "store request failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(STORE_READ_BACKOFF_MAX);
                attempt += 1;
            }
            res => return res,
        }
    }
}

/// A create-once PUT (`put_if_absent`) retried on transient errors like a
/// read. Idempotent because the object is compared: a 412 on an object
/// holding exactly `data` is our own earlier attempt that landed with its
/// reply lost, and counts as done.
pub async fn put_new(
    store: &std::sync::Arc<dyn spritedisk_store::ObjectStore>,
    key: &str,
    data: bytes::Bytes,
) -> Result<(), StoreError> {
    let mut retried = false;
    let res = retry_read(key, || {
        let tried = retried;
        retried = true;
        let data = data.clone();
        async move {
            match store.put_if_absent(key, data.clone()).await {
                Ok(_) => Ok(()),
                Err(StoreError::PreconditionFailed(k)) if tried => match store.get(key).await {
                    Ok(existing) if existing == data => Ok(()),
                    Ok(_) => Err(StoreError::PreconditionFailed(k)),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            }
        }
    })
    .await;
    res
}
