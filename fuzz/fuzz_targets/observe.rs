#![no_main]
// The first byte picks the protocol; the rest is a framed conversation (see doppel::fuzz).
const PROTOCOLS: [&str; 5] = ["http", "http2", "postgres", "mysql", "redis"];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Some((&pick, rest)) = data.split_first()
        && let Some(p) = doppel::fuzz::protocol(PROTOCOLS[pick as usize % PROTOCOLS.len()])
    {
        doppel::fuzz::observe(&p, rest);
    }
});
