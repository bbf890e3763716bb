//! The fuzz targets on a stable toolchain, as a short smoke run in CI: every seed of `fuzz/corpus/`
//! (conversations recorded from the real clients of the other tests, and every crash a fuzzer ever found),
//! then mutations of them and random inputs. Nothing may panic. Full coverage-guided runs: `fuzz/run`.

use std::path::PathBuf;

use proptest::prelude::*;

const PROTOCOLS: [&str; 5] = ["http", "http2", "postgres", "mysql", "redis"];

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = crate::common::repo().join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files.into_iter().map(|f| std::fs::read(f).unwrap()).collect()
}

fn run(target: &str, data: &[u8]) {
    match target {
        "http1" => doppel::fuzz::http1(data),
        "dns" => doppel::fuzz::dns(data),
        "store_files" => doppel::fuzz::store_files(data),
        "detect" => doppel::fuzz::detect(data),
        "observe" => {
            if let Some((&pick, rest)) = data.split_first()
                && let Some(p) = doppel::fuzz::protocol(PROTOCOLS[pick as usize % PROTOCOLS.len()])
            {
                doppel::fuzz::observe(&p, rest);
            }
        }
        other => panic!("unknown target {other}"),
    }
}

const TARGETS: [&str; 5] = ["http1", "observe", "dns", "store_files", "detect"];

#[test]
fn every_seed_and_every_past_crash() {
    for t in TARGETS {
        for seed in corpus(t) {
            run(t, &seed);
        }
    }
}

/// A seed with a few bytes flipped, cut or duplicated: the inputs decoders meet when a stream is not what
/// it claims to be.
fn mutate(seed: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for &(at, kind, byte) in edits {
        if out.is_empty() {
            out.push(byte);
            continue;
        }
        let i = at % out.len();
        match kind % 4 {
            0 => out[i] = byte,
            1 => out.truncate(i.max(1)),
            2 => out.insert(i, byte),
            _ => {
                let tail = out[i..].to_vec();
                out.extend_from_slice(&tail[..tail.len().min(64)]);
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mutated_seeds_never_panic(target in 0usize..TARGETS.len(), pick in any::<usize>(),
                                 edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8)) {
        let t = TARGETS[target];
        let seeds = corpus(t);
        let input = mutate(&seeds[pick % seeds.len()], &edits);
        run(t, &input);
    }

    #[test]
    fn random_bytes_never_panic(target in 0usize..TARGETS.len(), data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        run(TARGETS[target], &data);
    }
}
