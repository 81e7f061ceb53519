//! Test support shared by every crate's tests: an S3-compatible server on
//! 127.0.0.1 (moto, serialised — see `tests/s3/moto_serial.py`), started
//! once per test process on a free port, with a bucket, and the environment
//! a client needs to reach it. Not used by the product.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long moto may take to come up (measured ~1.5 s).
const START_WAIT_MAX: Duration = Duration::from_secs(60);
pub const TEST_BUCKET: &str = "spritedisk-test";

#[derive(Debug)]
pub struct S3TestServer {
    pub endpoint: String,
    _child: Child,
}

static SERVER: OnceLock<S3TestServer> = OnceLock::new();

/// The environment that points an S3 client at the test server.
pub fn s3_env() -> Vec<(&'static str, String)> {
    let s = server();
    vec![
        ("AWS_ENDPOINT_URL", s.endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

/// Sets [`s3_env`] in this process (for in-process stores); idempotent.
pub fn use_s3_env() {
    static SET: OnceLock<()> = OnceLock::new();
    SET.get_or_init(|| {
        // Set once, before any store of this process reads them.
        for (k, v) in s3_env() {
            std::env::set_var(k, v);
        }
        // Loopback HTTP needs no CA bundle, and some clients fail with one set.
        std::env::remove_var("AWS_CA_BUNDLE");
    });
}

/// A fresh `s3://` URL in the test bucket.
pub fn s3_url(name: &str) -> String {
    server();
    format!("s3://{TEST_BUCKET}/{}/{name}", uuid::Uuid::new_v4())
}

/// Whether tests should run on s3:// (`SPRITEDISK_TEST_STORE=s3`).
pub fn s3_selected() -> bool {
    std::env::var("SPRITEDISK_TEST_STORE").as_deref() == Ok("s3")
}

pub fn server() -> &'static S3TestServer {
    SERVER.get_or_init(start)
}

fn start() -> S3TestServer {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/s3/moto_serial.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: prctl in the child before exec: the server dies with us.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    // PR_SET_PDEATHSIG fires when the spawning *thread* exits: spawn from a
    // thread that lives as long as the process, not from a test's runtime.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.spawn());
        loop {
            std::thread::park();
        }
    });
    let child = rx
        .recv()
        .unwrap()
        .expect("python3 tests/s3/moto_serial.py (pip install 'moto[server]'; .ci/run does)");
    let t0 = Instant::now();
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        assert!(
            t0.elapsed() < START_WAIT_MAX,
            "moto did not start on port {port}: is moto[server] installed? (pip install 'moto[server]')"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Create the bucket (moto does not check signatures).
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "PUT /{TEST_BUCKET} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(
        reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"),
        "creating the test bucket: {reply}"
    );
    S3TestServer {
        endpoint: format!("http://127.0.0.1:{port}"),
        _child: child,
    }
}
