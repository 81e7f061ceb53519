//! A fault-injecting TCP proxy between a client and an S3 server, for the
//! outage and bad-answer tests: pass, add latency, reset connections, stall
//! them, or answer every request with an HTTP status. `Fault::Region` gives
//! loopback servers the latency and per-stream bandwidth of a real S3
//! region, for the benchmarks (`s3-region-proxy`).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does with new connections (existing ones keep theirs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    /// Pass, after this long.
    Delay(Duration),
    /// Close at once without a byte (the client sees a reset or EOF).
    Reset,
    /// Accept and never answer, until the fault changes.
    Stall,
    /// Answer every request with this HTTP status (403, 503...).
    Status(u16),
    /// Forward the next connection's request, swallow the answer and reset
    /// the client (an ambiguous failure: the request took effect); then Pass.
    LoseReplyOnce,
    /// Pass, shaped like a remote region: each answer's first byte waits
    /// `first_byte` after its request, and each connection moves at most
    /// `bytes_per_sec` each way.
    Region(Shape),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub first_byte: Duration,
    pub bytes_per_sec: u64,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    fault: Arc<Mutex<Fault>>,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let fault = Arc::new(Mutex::new(Fault::Pass));
        let f = fault.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let f = f.clone();
                std::thread::spawn(move || serve(conn, upstream, f));
            }
        });
        FaultProxy { addr, fault }
    }

    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn serve(client: TcpStream, upstream: SocketAddr, fault: Arc<Mutex<Fault>>) {
    let now = {
        let mut f = fault.lock().unwrap();
        let now = *f;
        if now == Fault::LoseReplyOnce {
            *f = Fault::Pass;
        }
        now
    };
    match now {
        Fault::LoseReplyOnce => {
            let Ok(server) = TcpStream::connect(upstream) else {
                return;
            };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || pump(c2, s2));
            // The server answers and closes (HTTP/1.0): swallow it all.
            let _ = std::io::copy(&mut &server, &mut std::io::sink());
            let _ = socket_linger_zero(&client);
            // Also ends the request pump, which holds a copy of the socket.
            let _ = client.shutdown(Shutdown::Both);
        }
        Fault::Reset => {
            // SO_LINGER 0: the close is a reset, as a crashed server's.
            let _ = socket_linger_zero(&client);
        }
        Fault::Stall => {
            let _ = client.set_read_timeout(Some(Duration::from_millis(100)));
            let mut c = &client;
            let mut buf = [0u8; 65536];
            while *fault.lock().unwrap() == Fault::Stall {
                if let Ok(0) = c.read(&mut buf) {
                    return;
                }
            }
            let _ = client.shutdown(Shutdown::Both);
        }
        Fault::Status(code) => {
            let _ = client.set_read_timeout(Some(Duration::from_millis(200)));
            let mut c = &client;
            let mut buf = [0u8; 65536];
            let _ = c.read(&mut buf);
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{}</Code><Message>injected by the test proxy</Message></Error>",
                if code == 403 { "AccessDenied" } else { "ServiceUnavailable" }
            );
            let _ = write!(
                c,
                "HTTP/1.1 {code} Injected\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.shutdown(Shutdown::Write);
        }
        Fault::Region(shape) => {
            let Ok(server) = TcpStream::connect(upstream) else {
                return;
            };
            // Set by the request side, taken by the answer side: the next
            // bytes from the server begin an answer.
            let asked = Arc::new(AtomicBool::new(false));
            let (c2, s2, a2) = (
                client.try_clone().unwrap(),
                server.try_clone().unwrap(),
                asked.clone(),
            );
            let up = std::thread::spawn(move || {
                pump_shaped(c2, s2, shape.bytes_per_sec, |_| {
                    a2.store(true, Ordering::Release)
                })
            });
            pump_shaped(server, client, shape.bytes_per_sec, |_| {
                if asked.swap(false, Ordering::AcqRel) {
                    std::thread::sleep(shape.first_byte);
                }
            });
            let _ = up.join();
        }
        Fault::Pass | Fault::Delay(_) => {
            if let Fault::Delay(d) = now {
                std::thread::sleep(d);
            }
            let Ok(server) = TcpStream::connect(upstream) else {
                return;
            };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let up = std::thread::spawn(move || pump(c2, s2));
            pump(server, client);
            let _ = up.join();
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

/// Copies `from` to `to` in chunks, calling `before` ahead of forwarding
/// each and pacing the stream to `bytes_per_sec` (a chunk of n bytes takes
/// n / rate on the wire, as if the link were that fast).
fn pump_shaped(
    mut from: TcpStream,
    mut to: TcpStream,
    bytes_per_sec: u64,
    mut before: impl FnMut(usize),
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        before(n);
        let started = std::time::Instant::now();
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        let wire = Duration::from_secs_f64(n as f64 / bytes_per_sec.max(1) as f64);
        if let Some(rest) = wire.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn socket_linger_zero(s: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized struct.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
