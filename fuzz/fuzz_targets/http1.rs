#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| doppel::fuzz::http1(data));
