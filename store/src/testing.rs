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
static S3S_FS: OnceLock<S3TestServer> = OnceLock::new();

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
    let port = free_port();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/s3/moto_serial.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg(port.to_string());
    let child = spawn_for_life(
        cmd,
        "python3 tests/s3/moto_serial.py (pip install 'moto[server]'; .ci/run does)",
    );
    wait_listening(port, "moto (pip install 'moto[server]')");
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

/// s3s-fs (a second implementation, files on disk) with the test bucket and
/// the credentials of [`s3_env`]. Its conditional creates are not atomic
/// under races (docs/reference/s3-test-servers.md): tests that race avoid it.
pub fn s3s_fs_server() -> &'static S3TestServer {
    S3S_FS.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("spritedisk-s3s-{}", std::process::id()));
        std::fs::create_dir_all(root.join(TEST_BUCKET)).unwrap();
        let port = free_port();
        let mut cmd = Command::new("s3s-fs");
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "test", "--secret-key", "test"])
            .arg(&root);
        let child = spawn_for_life(
            cmd,
            "s3s-fs (cargo install s3s-fs@0.14.1 --features binary; .ci/run does)",
        );
        wait_listening(port, "s3s-fs");
        S3TestServer {
            endpoint: format!("http://127.0.0.1:{port}"),
            _child: child,
        }
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn wait_listening(port: u16, what: &str) {
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < START_WAIT_MAX,
            "{what} did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Spawns a server that dies with this process.
fn spawn_for_life(mut cmd: Command, what: &str) -> Child {
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
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
    rx.recv()
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"))
}
