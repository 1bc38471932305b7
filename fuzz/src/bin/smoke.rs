//! A brief fuzz run on the stable toolchain, without libFuzzer: every target's seeds and
//! regression inputs, then random mutations of them (bit flips, byte edits, splices, inserted
//! separators) through the same checks the libFuzzer targets run, for a set time per target.
//! It has no coverage feedback, so it is a smoke test; `./scripts/fuzz.sh` runs libFuzzer.
//!
//! Usage: smoke [seconds-per-target] [target...]   (from the `fuzz/` directory)
//! On a failed check the input is written to `artifacts/<target>/smoke-<hash>` and the run
//! fails.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::panic;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use breakwater_fuzz::TARGETS;

/// Bytes that matter to the parsers: separators, JSON and SSE punctuation, UTF-8 lead bytes.
const INTERESTING: &[u8] = b"\0\n\r\t .:,;{}[]\"'-_+=/%\\0123456789eE\xff\xfe\xef\xbb\xbf\xc3\xe2";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds: f64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let wanted: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let seed = std::env::var("SMOKE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("smoke fuzzing, {seconds} s per target, SMOKE_SEED={seed}");
    // Failed checks are reported once, with their input, below.
    panic::set_hook(Box::new(|_| {}));

    let mut failed = false;
    for &(name, check) in TARGETS {
        if !wanted.is_empty() && !wanted.contains(&name) {
            continue;
        }
        let mut pool = load(name);
        let replayed = pool.len();
        for input in &pool {
            if !run(name, check, input) {
                failed = true;
            }
        }
        if pool.is_empty() {
            pool.push(Vec::new());
        }
        let mut rng = fastrand::Rng::with_seed(seed ^ hash(name.as_bytes()));
        let started = Instant::now();
        let deadline = started + Duration::from_secs_f64(seconds);
        let mut executions: u64 = 0;
        while Instant::now() < deadline {
            for _ in 0..64 {
                let input = mutate(&mut rng, &pool);
                executions += 1;
                if !run(name, check, &input) {
                    failed = true;
                    break;
                }
                // Keep a few mutants around so mutations can stack.
                if rng.u8(..) == 0 && pool.len() < 4096 {
                    pool.push(input);
                }
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "{name:>13}: {replayed} inputs replayed, {executions} mutated inputs in {elapsed:.1} s ({:.0}/s)",
            executions as f64 / elapsed
        );
    }
    if failed {
        println!("smoke fuzzing FAILED: see the inputs written above");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Seeds, kept regressions, and a local libFuzzer corpus when there is one.
fn load(target: &str) -> Vec<Vec<u8>> {
    let mut inputs = Vec::new();
    for dir in ["seeds", "regressions", "corpus"] {
        let Ok(entries) = fs::read_dir(Path::new(dir).join(target)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        // A local corpus can be large: a sample is enough here.
        paths.truncate(if dir == "corpus" { 2000 } else { usize::MAX });
        inputs.extend(paths.iter().filter_map(|p| fs::read(p).ok()));
    }
    inputs
}

fn run(target: &str, check: fn(&[u8]), input: &[u8]) -> bool {
    let outcome = panic::catch_unwind(|| check(input));
    if let Err(payload) = outcome {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let dir = Path::new("artifacts").join(target);
        let path = dir.join(format!("smoke-{:016x}", hash(input)));
        let _ = fs::create_dir_all(&dir).and_then(|()| fs::write(&path, input));
        println!(
            "{target}: check failed: {message}\n  input {:?}\n  written to fuzz/{}",
            String::from_utf8_lossy(input),
            path.display()
        );
        return false;
    }
    true
}

fn mutate(rng: &mut fastrand::Rng, pool: &[Vec<u8>]) -> Vec<u8> {
    let mut data = pool[rng.usize(..pool.len())].clone();
    for _ in 0..rng.usize(1..=4) {
        let len = data.len();
        match rng.u8(..8) {
            0 if len > 0 => {
                let i = rng.usize(..len);
                data[i] ^= 1 << rng.u8(..8);
            }
            1 if len > 0 => {
                let i = rng.usize(..len);
                data[i] = rng.u8(..);
            }
            2 => {
                let i = rng.usize(..=len);
                data.insert(i, INTERESTING[rng.usize(..INTERESTING.len())]);
            }
            3 if len > 0 => {
                let start = rng.usize(..len);
                let end = (start + rng.usize(1..=16)).min(len);
                data.drain(start..end);
            }
            4 if len > 0 => {
                // Duplicate a range.
                let start = rng.usize(..len);
                let end = (start + rng.usize(1..=32)).min(len);
                let copy = data[start..end].to_vec();
                let at = rng.usize(..=data.len());
                data.splice(at..at, copy);
            }
            5 => {
                // Splice in part of another input.
                let other = &pool[rng.usize(..pool.len())];
                if !other.is_empty() {
                    let start = rng.usize(..other.len());
                    let end = (start + rng.usize(1..=64)).min(other.len());
                    let at = rng.usize(..=data.len());
                    data.splice(at..at, other[start..end].iter().copied());
                }
            }
            6 if len > 0 => {
                // Truncate.
                data.truncate(rng.usize(..len));
            }
            _ => {
                let at = rng.usize(..=len);
                let random: Vec<u8> = (0..rng.usize(1..=8)).map(|_| rng.u8(..)).collect();
                data.splice(at..at, random);
            }
        }
    }
    data.truncate(1 << 16);
    data
}

fn hash(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}
