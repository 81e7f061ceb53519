//! Puts a remote region's latency and per-stream bandwidth in front of a
//! loopback S3 server, so that the benchmarks measure spritedisk, the raw
//! store and s3backer as they would run against real S3: a 1 ms loopback
//! server flatters every design.
//!
//! Usage: s3-region-proxy HOST:PORT [--first-byte-ms 20] [--stream-mbps 100]
//! Prints the endpoint to use (http://127.0.0.1:PORT) and serves until killed.

use std::net::ToSocketAddrs;
use std::time::Duration;

use spritedisk_e2e::proxy::{Fault, FaultProxy, Shape};

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: s3-region-proxy HOST:PORT [--first-byte-ms MS] [--stream-mbps MB_PER_S]";
    let upstream = args
        .next()
        .and_then(|a| a.to_socket_addrs().ok()?.next())
        .unwrap_or_else(|| fail(usage));
    let (mut first_byte_ms, mut stream_mbps) = (20u64, 100u64);
    while let Some(flag) = args.next() {
        let value = args.next().and_then(|v| v.parse::<u64>().ok());
        match (flag.as_str(), value) {
            ("--first-byte-ms", Some(v)) => first_byte_ms = v,
            ("--stream-mbps", Some(v)) if v > 0 => stream_mbps = v,
            _ => fail(usage),
        }
    }
    let proxy = FaultProxy::start(upstream);
    proxy.set(Fault::Region(Shape {
        first_byte: Duration::from_millis(first_byte_ms),
        bytes_per_sec: stream_mbps * 1_000_000,
    }));
    println!("{}", proxy.endpoint());
    loop {
        std::thread::park();
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    std::process::exit(2);
}
