#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| spritedisk_fuzz::nbd_session(data));
