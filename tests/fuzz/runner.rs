//! Runs a target over mutated inputs, each under `catch_unwind`. A panic is recorded with its
//! message, location and backtrace; its input is written to `target/fuzz-crashes/`; the run
//! continues (so one known bug does not hide others) and the test fails at the end.
//!
//! `FUZZ_ITERATIONS` (default 20,000) inputs per target; `FUZZ_SEED` (default fixed) seeds the
//! mutator, so a failing run can be replayed exactly.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Once;
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::mutator::mutate;

const DEFAULT_ITERATIONS: u64 = 20_000;
/// Mutated inputs kept for further mutation (a random walk away from the seeds).
const POOL: usize = 256;
/// Inputs saved per distinct panic location.
const SAVED_PER_SITE: usize = 3;

thread_local! {
    static LAST_PANIC: RefCell<Option<(String, String, String)>> = const { RefCell::new(None) };
    /// True while this thread runs a target input (panics elsewhere print as usual).
    static IN_TARGET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Locations whose backtrace was already taken (taking one costs about a millisecond).
    static SEEN: RefCell<std::collections::HashSet<String>> = RefCell::new(Default::default());
}

/// Replaces the panic hook once: panics are recorded per thread (location, backtrace) instead
/// of printed, so that a run with many panics stays readable.
fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_TARGET.with(|t| t.get()) {
                return default(info);
            }
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let message = info.payload_as_str().unwrap_or("(no message)").to_string();
            let first = SEEN.with(|s| s.borrow_mut().insert(location.clone()));
            let backtrace = if first {
                std::backtrace::Backtrace::force_capture().to_string()
            } else {
                String::new()
            };
            LAST_PANIC.with(|p| *p.borrow_mut() = Some((location, message, backtrace)));
        }));
    });
}

fn iterations() -> u64 {
    std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(DEFAULT_ITERATIONS)
}

fn seed(name: &str) -> u64 {
    let base = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x1f2e_3d4c_5b6a_7988);
    name.bytes()
        .fold(base, |h, b| h.rotate_left(5) ^ u64::from(b))
}

fn crash_dir() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("fuzz-crashes")
}

/// One panic location and what was seen there.
struct Site {
    message: String,
    /// The start of the first input that panicked there.
    example: String,
    backtrace: String,
    count: u64,
    saved: Vec<PathBuf>,
}

/// Runs `target` over `seeds` and their mutations; panics (failing the test) if any input
/// panicked, listing each location, its message, a saved input and a backtrace.
pub fn fuzz(name: &str, seeds: &[Vec<u8>], target: impl Fn(&[u8]) -> bool) {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    install_hook();
    let total = iterations();
    let mut rng = SmallRng::seed_from_u64(seed(name));
    let mut pool: Vec<Vec<u8>> = seeds.to_vec();
    let mut sites: BTreeMap<String, Site> = BTreeMap::new();
    let started = Instant::now();
    let mut accepted = 0u64;
    for i in 0..total {
        let mut input = if i < seeds.len() as u64 {
            seeds[i as usize].clone()
        } else {
            let from: &[Vec<u8>] = if rng.random_bool(0.5) { seeds } else { &pool };
            let mut input = from[rng.random_range(0..from.len())].clone();
            let other = &pool[rng.random_range(0..pool.len())];
            mutate(&mut rng, &mut input, other);
            input
        };
        IN_TARGET.with(|t| t.set(true));
        let outcome = catch_unwind(AssertUnwindSafe(|| target(&input)));
        IN_TARGET.with(|t| t.set(false));
        match outcome {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(_) => record(name, &mut sites, &input),
        }
        if i >= seeds.len() as u64 && rng.random_range(0..8u8) == 0 {
            if pool.len() < POOL {
                pool.push(std::mem::take(&mut input));
            } else {
                let slot = rng.random_range(seeds.len()..POOL);
                pool[slot] = std::mem::take(&mut input);
            }
        }
    }
    eprintln!(
        "fuzz {name}: {total} inputs in {:.1} s, {accepted} accepted, {} panic location(s)",
        started.elapsed().as_secs_f64(),
        sites.len()
    );
    if sites.is_empty() {
        return;
    }
    let report: Vec<String> = sites
        .iter()
        .map(|(location, s)| {
            format!(
                "{location}: {} input(s) panicked: {}\n  first input: {:?}\n  saved: {:?}\n  backtrace:\n{}",
                s.count,
                s.message,
                s.example,
                s.saved,
                short_backtrace(&s.backtrace)
            )
        })
        .collect();
    panic!("fuzz {name}: panics found\n{}", report.join("\n"));
}

fn record(name: &str, sites: &mut BTreeMap<String, Site>, input: &[u8]) {
    let (location, message, backtrace) = LAST_PANIC
        .with(|p| p.borrow_mut().take())
        .unwrap_or_default();
    let site = sites.entry(location).or_insert_with(|| Site {
        message,
        example: String::from_utf8_lossy(&input[..input.len().min(300)]).into_owned(),
        backtrace,
        count: 0,
        saved: Vec::new(),
    });
    site.count += 1;
    if site.saved.len() < SAVED_PER_SITE {
        let dir = crash_dir();
        let _ = std::fs::create_dir_all(&dir);
        let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        });
        let path = dir.join(format!("{name}-{hash:016x}.bin"));
        if std::fs::write(&path, input).is_ok() {
            site.saved.push(path);
        }
    }
}

/// The frames of a backtrace inside this crate (the rest is the runtime and the harness).
fn short_backtrace(backtrace: &str) -> String {
    let lines: Vec<&str> = backtrace
        .lines()
        .filter(|l| l.contains("infermq::") || l.contains("at ./src/"))
        .take(24)
        .collect();
    lines.join("\n")
}
