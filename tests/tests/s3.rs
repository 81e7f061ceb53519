//! s3:// specifics: a wrong bucket, a wrong endpoint or missing credentials
//! is a clear error at attach naming the cause, and nothing is created.

use std::process::{Command, Output};
use std::time::Duration;

use spritedisk_e2e::proxy::{Fault, FaultProxy};
use spritedisk_e2e::*;
use spritedisk_store::testing::{self, TEST_BUCKET};

/// `spritedisk ARGS` with the test server's environment changed by `edit`.
fn run_with(args: &[&str], edit: impl FnOnce(&mut Command)) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env("SPRITEDISK_LOG", "warn")
        .envs(testing::s3_env())
        .env_remove("AWS_CA_BUNDLE")
        // No profile files and no instance metadata to fall back on.
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    edit(&mut cmd);
    cmd.output().expect("run spritedisk")
}

fn fails_with(o: &Output, needle: &str) {
    assert!(!o.status.success(), "succeeded: {}", stdout(o));
    assert!(
        stderr(o).contains(needle),
        "expected {needle:?} in: {}",
        stderr(o)
    );
}

#[test]
fn create_and_attach_on_s3_report_the_cause() {
    let url = testing::s3_url("vol");
    let sock = std::env::temp_dir().join(format!("s3-bad-{}.sock", std::process::id()));
    let sock = sock.to_str().unwrap();

    // A bucket that does not exist.
    let o = run_with(
        &["create", "s3://no-such-bucket-here/v", "--size", "1G"],
        |_| {},
    );
    fails_with(&o, "bucket \"no-such-bucket-here\" does not exist");

    // Missing credentials.
    let o = run_with(&["create", &url, "--size", "1G"], |c| {
        c.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY");
    });
    fails_with(&o, "credentials");

    // An endpoint nobody listens on.
    let o = run_with(&["attach", &url, "--nbd", sock], |c| {
        c.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
    });
    fails_with(&o, "cannot reach the endpoint");
    fails_with(&o, "127.0.0.1:9");

    // And a volume that is not there is named as such, not as a store error.
    let o = run_with(&["attach", &url, "--nbd", sock], |_| {});
    fails_with(&o, &format!("no volume at {url}"));

    // Nothing was created along the way.
    assert!(list_keys_s3(&url).is_empty());
}

fn list_keys_s3(url: &str) -> Vec<String> {
    testing::use_s3_env();
    list_keys(url, "")
}

fn moto_addr() -> std::net::SocketAddr {
    testing::server()
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .unwrap()
}

#[test]
fn http_403_is_access_denied_at_once() {
    let proxy = FaultProxy::start(moto_addr());
    proxy.set(Fault::Status(403));
    let url = testing::s3_url("vol");
    let o = run_with(&["create", &url, "--size", "1G"], |c| {
        c.env("AWS_ENDPOINT_URL", proxy.endpoint());
    });
    fails_with(&o, "access denied (HTTP 403");
}

/// The benchmarks' region profile (`s3-region-proxy`): objects pass intact
/// (store-bench reads each back), every answer waits its first-byte
/// latency and a stream moves no faster than its rate. Only lower bounds
/// on time are asserted, which a busy machine cannot break.
#[test]
fn the_region_proxy_adds_latency_and_paces_streams_without_changing_bytes() {
    let mut proxy = Command::new(env!("CARGO_BIN_EXE_s3-region-proxy"))
        .args([
            &moto_addr().to_string(),
            "--first-byte-ms",
            "30",
            "--stream-mbps",
            "20",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut endpoint = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(proxy.stdout.take().unwrap()),
        &mut endpoint,
    )
    .unwrap();
    let o = run_with(
        &[
            "store-bench",
            &testing::s3_url("region"),
            "--size",
            "2M",
            "--count",
            "2",
            "--parallel",
            "1",
        ],
        |c| {
            c.env("AWS_ENDPOINT_URL", endpoint.trim());
        },
    );
    let _ = proxy.kill();
    let _ = proxy.wait();
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    for k in ["put_mbps", "get_mbps"] {
        let mbps = j[k].as_f64().unwrap();
        assert!(mbps <= 20.0, "{k} {mbps} MB/s through a 20 MB/s stream");
    }
    let p50 = j["small_put_p50_us"].as_u64().unwrap();
    assert!(
        p50 >= 30_000,
        "a small PUT answered in {p50} us, under the 30 ms first byte"
    );
}

/// A 30-second outage of the store (10 s of reset connections, 10 s of HTTP
/// 503, 10 s of stalled connections) in the middle of fio writes with
/// FLUSHes: writes block within the memory bound, flushes wait, I/O
/// resumes, and fio's verify finds every block.
#[test]
fn a_30_second_outage_in_the_middle_of_fio_writes_loses_nothing() {
    require("fio", "fio");
    let proxy = FaultProxy::start(moto_addr());
    let url = testing::s3_url("outage");
    let o = run_with(&["create", &url, "--size", "1G"], |_| {});
    assert!(o.status.success(), "{}", stderr(&o));
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nbd.sock");
    let mut via_proxy = testing::s3_env();
    via_proxy.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    via_proxy.push(("AWS_ENDPOINT_URL", proxy.endpoint()));
    let small = [
        "--dirty-max",
        "16M",
        "--segment-size",
        "4M",
        "--flush-timeout",
        "90",
    ];
    let d = Daemon::attach_with_env(&url, &sock, &dir.path().join("cache"), &small, &via_proxy);
    let uri = format!("--uri={}", d.nbd_uri());
    let fio = |extra: &[&str]| {
        let mut c = Command::new("fio");
        c.args([
            "--name=outage",
            "--ioengine=nbd",
            &uri,
            "--rw=write",
            "--bs=64k",
            "--size=96M",
            "--verify=crc32c",
            "--verify_fatal=1",
        ])
        .args(extra);
        c
    };
    // 96 MiB at 2 MB/s with a FLUSH every 32 writes: ~50 s of writing.
    let writer = fio(&["--rate=2m", "--fsync=32"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(8));
    proxy.set(Fault::Reset);
    std::thread::sleep(Duration::from_secs(10));
    proxy.set(Fault::Status(503));
    std::thread::sleep(Duration::from_secs(10));
    proxy.set(Fault::Stall);
    std::thread::sleep(Duration::from_secs(8));
    // Deep in the outage: writers wait, memory stays within --dirty-max.
    let cache = dir.path().join("cache");
    let o = run_with(
        &[
            "stats",
            &url,
            "--cache-dir",
            cache.to_str().unwrap(),
            "--json",
        ],
        |_| {},
    );
    let st: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("stats --json");
    let live = &st["live"];
    assert!(
        live["dirty_bytes"].as_u64().unwrap() <= (16 << 20) + (64 << 10)
            && live["segment_memory_bytes"].as_u64().unwrap() <= (16 << 20) + (4 << 20),
        "memory is bounded during the outage: {live:#}"
    );
    assert!(
        live["upload_backlog_segments"].as_u64().unwrap() > 0,
        "uploads are waiting: {live:#}"
    );
    std::thread::sleep(Duration::from_secs(2));
    proxy.set(Fault::Pass);
    let out = writer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "fio failed across the outage: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        d.log()
    );
    assert!(
        d.log().contains("retrying"),
        "the outage was seen: {}",
        d.log()
    );
    assert_eq!(d.detach(), 0);

    // Everything is in the store: a fresh machine verifies every block.
    let cache2 = dir.path().join("cache2");
    let d = Daemon::attach_with_env(&url, &sock, &cache2, &[], &testing::s3_env());
    let out = fio(&["--verify_only"]).output().unwrap();
    assert!(
        out.status.success(),
        "verify after re-attach failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(d.detach(), 0);
}

/// A conditional PUT whose answer is lost after it took effect: the SDK
/// retries, the retry is refused (412), and the put id in the object's
/// metadata shows the first attempt was ours, so the PUT succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_conditional_put_is_resolved_by_its_put_id() {
    testing::use_s3_env();
    let proxy = FaultProxy::start(moto_addr());
    let prefix = uuid_prefix();
    let s = spritedisk_store::S3Store::new_at(TEST_BUCKET, &prefix, Some(proxy.endpoint()));
    use spritedisk_store::ObjectStore;
    proxy.set(Fault::LoseReplyOnce);
    let etag = s
        .put_if_absent("segments/x", bytes_of("mine"))
        .await
        .expect("our own landed attempt counts as success");
    assert_eq!(s.head("segments/x").await.unwrap().unwrap().etag, etag);
    assert_eq!(s.get("segments/x").await.unwrap(), bytes_of("mine"));
    // Someone else's object is still refused.
    assert!(matches!(
        s.put_if_absent("segments/x", bytes_of("theirs")).await,
        Err(spritedisk_store::StoreError::PreconditionFailed(_))
    ));
}

fn uuid_prefix() -> String {
    testing::s3_url("ambiguous")
        .trim_start_matches(&format!("s3://{TEST_BUCKET}/"))
        .to_string()
}

fn bytes_of(s: &str) -> bytes::Bytes {
    bytes::Bytes::from(s.to_string())
}
