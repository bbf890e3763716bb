//! The fuzz targets on a stable toolchain, as a short smoke run in CI: every seed of `fuzz/corpus/`
//! (conversations recorded from the real clients of the other tests, and every crash a fuzzer ever found),
//! then mutations of them and random inputs. Nothing may panic. Full coverage-guided runs: `fuzz/run`.

use std::path::PathBuf;

use proptest::prelude::*;

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

#[test]
fn every_seed_and_every_past_crash() {
    for (t, f) in doppel::fuzz::TARGETS {
        for seed in corpus(t) {
            f(&seed);
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
    fn mutated_seeds_never_panic(target in 0usize..doppel::fuzz::TARGETS.len(), pick in any::<usize>(),
                                 edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..8)) {
        let (t, f) = doppel::fuzz::TARGETS[target];
        let seeds = corpus(t);
        f(&mutate(&seeds[pick % seeds.len()], &edits));
    }

    #[test]
    fn random_bytes_never_panic(target in 0usize..doppel::fuzz::TARGETS.len(), data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        (doppel::fuzz::TARGETS[target].1)(&data);
    }
}
