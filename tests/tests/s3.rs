//! s3:// specifics: a wrong bucket, a wrong endpoint or missing credentials
//! is a clear error at attach naming the cause, and nothing is created.

use std::process::{Command, Output};

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
    let _ = TEST_BUCKET;
}

fn list_keys_s3(url: &str) -> Vec<String> {
    testing::use_s3_env();
    list_keys(url, "")
}
