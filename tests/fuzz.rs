//! Mutation fuzzing of everything a producer controls, without a broker: request bodies (JSON
//! and binary), requests validated against the bundled models' signatures, the delivery
//! envelope (properties and header tables) and training jobs. Each input runs under
//! `catch_unwind`; a panic fails the test and its input is kept in `target/fuzz-crashes/`.
//!
//! `FUZZ_ITERATIONS` inputs per target (default 20,000, a few seconds); `scripts/fuzz.sh`
//! runs millions in release mode. cargo-fuzz (libFuzzer) needs a nightly toolchain, which this
//! project does not require, so the mutator is our own (`fuzz/mutator.rs`).

#[path = "fuzz/mutator.rs"]
mod mutator;
#[path = "fuzz/runner.rs"]
mod runner;
#[path = "fuzz/seeds.rs"]
mod seeds;
#[path = "fuzz/targets.rs"]
mod targets;

use rand::{Rng, SeedableRng};

#[test]
fn fuzz_decode_request_json() {
    let signatures = seeds::signatures();
    runner::fuzz("decode_json", &seeds::json_bodies(), |b| {
        targets::decode_json(b, &signatures)
    });
}

#[test]
fn fuzz_decode_request_binary() {
    let signatures = seeds::signatures();
    runner::fuzz("decode_binary", &seeds::binary_bodies(), |b| {
        targets::decode_binary(b, &signatures)
    });
}

#[test]
fn fuzz_decode_and_validate_per_model() {
    let signatures = seeds::signatures();
    let bodies: Vec<Vec<u8>> = seeds::json_bodies()
        .into_iter()
        .take(signatures.len())
        .enumerate()
        .map(|(i, body)| [vec![i as u8], body].concat())
        .collect();
    runner::fuzz("validate", &bodies, |b| {
        targets::decode_and_validate(b, &signatures)
    });
}

#[test]
fn fuzz_envelope() {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(4);
    let seeds: Vec<Vec<u8>> = (0..32)
        .map(|_| (0..96).map(|_| rng.random()).collect())
        .collect();
    runner::fuzz("envelope", &seeds, targets::envelope);
}

#[test]
fn fuzz_training_job() {
    runner::fuzz(
        "training_job",
        &seeds::training_jobs(),
        targets::training_job,
    );
}
