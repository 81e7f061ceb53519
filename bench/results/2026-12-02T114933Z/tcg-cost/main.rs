// crc32c of a 4 KiB block and a 4 KiB memcpy: ns each (host vs the TCG VM).
use std::time::Instant;
fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let buf: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    let mut dst = vec![0u8; 4096];
    let mut acc = 0u32;
    let t = Instant::now();
    for _ in 0..n { acc ^= crc32c::crc32c(std::hint::black_box(&buf)); }
    let crc_ns = t.elapsed().as_nanos() as f64 / n as f64;
    let t = Instant::now();
    for _ in 0..n { dst.copy_from_slice(std::hint::black_box(&buf)); std::hint::black_box(&dst); }
    let cpy_ns = t.elapsed().as_nanos() as f64 / n as f64;
    println!("{{\"crc32c_4k_ns\": {crc_ns:.1}, \"memcpy_4k_ns\": {cpy_ns:.1}, \"sse42\": {}, \"acc\": {acc}}}", is_x86_feature_detected!("sse4.2"));
}
