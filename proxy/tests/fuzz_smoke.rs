//! A short run of every fuzz target (`portico::fuzzing`) in CI: the checked-in corpus
//! (`fuzz/corpus/<target>/`), mutations of it, and random inputs. Long runs use cargo-fuzz
//! (`fuzz/README.md`); this catches a parser regression in seconds.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if let Ok(b) = std::fs::read(e.path()) {
                out.push(b);
            }
        }
    }
    out
}

/// Flips, inserts, deletes and duplicates bytes, like a fuzzer's mutations.
fn mutate(rng: &mut fastrand::Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..rng.usize(1..6) {
        let at = rng.usize(..=v.len());
        match rng.u8(..5) {
            0 if !v.is_empty() => {
                let i = rng.usize(..v.len());
                v[i] = rng.u8(..);
            }
            1 => v.insert(
                at,
                *b"\r\n:;, \t0x%/.\"\\".get(rng.usize(..15)).unwrap_or(&b'a'),
            ),
            2 if at < v.len() => {
                v.remove(at);
            }
            3 if !v.is_empty() => {
                let s = rng.usize(..v.len());
                let e = rng.usize(s..=v.len().min(s + 16));
                let chunk = v[s..e].to_vec();
                let at = rng.usize(..=v.len());
                v.splice(at..at, chunk);
            }
            _ => v.push(rng.u8(..)),
        }
    }
    v
}

#[test]
fn every_target_survives_corpus_mutations_and_noise() {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for (name, target) in portico::fuzzing::TARGETS {
        let seeds = corpus(name);
        assert!(!seeds.is_empty(), "fuzz/corpus/{name} is empty");
        for s in &seeds {
            target(s);
        }
        for _ in 0..3000 {
            let seed = &seeds[rng.usize(..seeds.len())];
            target(&mutate(&mut rng, seed));
        }
        for _ in 0..1000 {
            let len = rng.usize(..256);
            let noise: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            target(&noise);
        }
    }
}
