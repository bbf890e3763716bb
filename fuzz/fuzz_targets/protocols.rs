#![no_main]
// Every protocol of doppel's registry on each input: its decoders, and its observer over the input as a
// framed conversation (see doppel::fuzz).
libfuzzer_sys::fuzz_target!(|data: &[u8]| doppel::fuzz::protocols(data));
