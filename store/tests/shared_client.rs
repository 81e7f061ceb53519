//! `share_s3_client` and `warm_up`, what a warm-pool standby does before it
//! knows its volume: after them, a store at another prefix (the volume
//! bound later) works through the same client. In a test binary of its own:
//! sharing is process-wide, and the other store tests run many runtimes.

use bytes::Bytes;
use spritedisk_store::{open_url, share_s3_client, testing, warm_up};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_opened_after_the_warm_up_uses_the_shared_client() {
    testing::use_s3_env();
    share_s3_client();
    warm_up(&testing::s3_url("pool"))
        .await
        .expect("warm-up against moto");
    let s = open_url(&testing::s3_url("volume")).unwrap();
    s.put("k", Bytes::from_static(b"value")).await.unwrap();
    assert_eq!(s.get("k").await.unwrap(), Bytes::from_static(b"value"));
    // The warm-up names what it could not reach.
    match warm_up("s3://no-such-bucket-here/x").await {
        Ok(_) => panic!("a warm-up against a missing bucket succeeded"),
        Err(e) => assert!(e.to_string().contains("no-such-bucket-here"), "{e}"),
    }
    match warm_up("ftp://x").await {
        Ok(_) => panic!("ftp:// accepted"),
        Err(e) => assert!(e.to_string().contains("unsupported scheme"), "{e}"),
    }
}
