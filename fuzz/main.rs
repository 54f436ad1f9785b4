//! The fuzzer's driver: picks the entry points, replays the saved regressions,
//! runs seeded, mutated inputs through every entry point on every core, each
//! under `catch_unwind`, saves what fails, and prints one table
//! (docs/fuzzing.md).
//!
//! Run: `cargo test --locked --profile fuzz --test fuzz [-- OPTIONS]`.
//! Options, each also an environment variable: `--seed N` (`WEFT_FUZZ_SEED`),
//! `--iters N` (`WEFT_FUZZ_ITERS`, inputs per entry point, default 10^6),
//! `--long` (`WEFT_FUZZ_LONG=1`: 10^8), `--only NAME[,NAME]`
//! (`WEFT_FUZZ_ONLY`), `--threads N` (`WEFT_FUZZ_THREADS`); and `--list`, and
//! `--replay FILE...` (run saved inputs only: the entry point is the file's
//! directory under `regressions/`, or its name's prefix under `failures/`).

#![forbid(unsafe_code)]

/// Returns a [`Violation`] from the entry point when `cond` is false.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::Violation(format!($($fmt)+)));
        }
    };
}

mod batch;
mod cni;
mod control;
mod mutate;
mod packet;

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng};

/// The PRNG every mutation draws from: xoshiro256++, fast and seeded, the
/// same sequence for a seed with the locked `rand`.
pub type Rng = SmallRng;

/// The seed of CI's pass, so that it is the same pass every time.
const DEFAULT_SEED: u64 = 0x7765_6674_0013_f022;
/// Inputs per entry point: CI's bounded pass, and the long mode.
const DEFAULT_ITERS: u64 = 1_000_000;
const LONG_ITERS: u64 = 100_000_000;
/// Inputs per job: the unit a thread takes from the queue.
const CHUNK: u64 = 20_000;
/// Failing inputs saved per entry point (one per distinct failure first).
const MAX_SAVED: usize = 16;

/// What an entry point made of one input, with a short label of the outcome
/// (a drop reason, an error's shape): `Accepted` when it returned `Ok` or an
/// action that goes on, `Refused` for a typed refusal.
pub enum Verdict {
    Accepted(Label),
    Refused(Label),
}

pub type Label = Cow<'static, str>;

/// An invariant the entry point's answer broke, described.
#[derive(Debug)]
pub struct Violation(pub String);

pub type Outcome = Result<Verdict, Violation>;

pub fn accepted(l: impl Into<Label>) -> Outcome {
    Ok(Verdict::Accepted(l.into()))
}

pub fn refused(l: impl Into<Label>) -> Outcome {
    Ok(Verdict::Refused(l.into()))
}

/// An error message's shape, as a label: up to its first `:`, quote or
/// brace, digits folded to `#`, at most 60 characters.
pub fn shape(msg: &str) -> Label {
    let mut out = String::new();
    for c in msg.chars() {
        if matches!(c, ':' | '"' | '{' | '(' | '[') || out.len() >= 60 {
            break;
        }
        let c = if c.is_ascii_digit() { '#' } else { c };
        if !(c == '#' && out.ends_with('#')) {
            out.push(c);
        }
    }
    Cow::Owned(out.trim_end().to_string())
}

/// JSON values equal but for the last bits of floats: serde_json (without
/// its `float_roundtrip` feature) may read back a printed float one unit in
/// the last place off, which is serde_json's, not weft's.
pub fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x == y || (x - y).abs() <= 1e-14 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((kx, vx), (ky, vy))| kx == ky && same_json(vx, vy))
        }
        _ => a == b,
    }
}

/// One untrusted-input entry point: its valid seeds, how its inputs mutate,
/// and how one input runs (no I/O; every answer checked where cheap).
pub struct Entry {
    pub name: &'static str,
    pub about: &'static str,
    pub seeds: fn() -> Vec<Vec<u8>>,
    pub mutate: fn(&mut Rng, &mut Vec<u8>, &[Vec<u8>]),
    pub run: fn(&[u8]) -> Outcome,
}

fn all_entries() -> Vec<Entry> {
    let mut v = packet::entries();
    v.extend(batch::entries());
    v.extend(control::entries());
    v.extend(cni::entries());
    v
}

/// Counts of one entry point (or one job of it).
#[derive(Default)]
struct Stats {
    inputs: u64,
    accepted: u64,
    refused: u64,
    panics: u64,
    violations: u64,
    regressions: u64,
    kinds: BTreeMap<(bool, Label), u64>,
    busy: Duration,
}

impl Stats {
    fn add(&mut self, o: Stats) {
        self.inputs += o.inputs;
        self.accepted += o.accepted;
        self.refused += o.refused;
        self.panics += o.panics;
        self.violations += o.violations;
        self.regressions += o.regressions;
        self.busy += o.busy;
        for (k, n) in o.kinds {
            *self.kinds.entry(k).or_default() += n;
        }
    }

    fn kinds_of(&self, acc: bool) -> usize {
        self.kinds.keys().filter(|(a, _)| *a == acc).count()
    }
}

/// A panic or a broken invariant, and where its input went.
struct Failure {
    entry: &'static str,
    what: String,
    origin: String,
    saved: Option<PathBuf>,
}

/// What every worker shares.
struct Shared {
    failures: Mutex<Vec<Failure>>,
    /// `(entry, failure key)` of every failure saved already.
    saved: Mutex<BTreeSet<(&'static str, String)>>,
    seed: u64,
    save: bool,
}

thread_local! {
    /// The location and message of this thread's last panic (set by the hook).
    static LAST_PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

/// Panic locations already printed.
static PANIC_SITES: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Replaces the default panic hook: it records each panic's location and
/// message for the input that caused it, and prints one line per distinct
/// location instead of a backtrace per input.
fn quiet_panics() {
    panic::set_hook(Box::new(|info| {
        let loc = info.location().map_or_else(
            || "(unknown)".to_string(),
            |l| format!("{}:{}:{}", l.file(), l.line(), l.column()),
        );
        let p = info.payload();
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-string panic)".into());
        let first = PANIC_SITES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(loc.clone());
        if first {
            eprintln!("fuzz: panic at {loc}: {msg} (first at this location; the run goes on)");
        }
        LAST_PANIC.with(|l| *l.borrow_mut() = Some((loc, msg)));
    }));
}

enum Fail {
    Panic { loc: String, msg: String },
    Broken(String),
}

impl Fail {
    /// What identifies this failure among others: the panic's location, or
    /// the violation's shape.
    fn key(&self) -> String {
        match self {
            Fail::Panic { loc, .. } => loc.clone(),
            Fail::Broken(s) => shape(s).into_owned(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Fail::Panic { loc, msg } => format!("panic at {loc}: {msg}"),
            Fail::Broken(s) => format!("invariant: {s}"),
        }
    }
}

fn run_one(e: &Entry, input: &[u8]) -> Result<Verdict, Fail> {
    match panic::catch_unwind(AssertUnwindSafe(|| (e.run)(input))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(Violation(s))) => Err(Fail::Broken(s)),
        Err(_) => {
            let (loc, msg) = LAST_PANIC
                .with(|l| l.borrow_mut().take())
                .unwrap_or_else(|| ("(unknown)".into(), "(no message)".into()));
            Err(Fail::Panic { loc, msg })
        }
    }
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// FNV-1a, 64 bits: names saved inputs and derives per-job seeds.
fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// splitmix64's finaliser.
fn mix(mut h: u64) -> u64 {
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl Shared {
    /// Records a failure; saves its input under `fuzz/failures/` the first
    /// time this kind of failure is seen (and at most [`MAX_SAVED`] per entry).
    fn record(&self, e: &Entry, f: &Fail, input: &[u8], origin: String) {
        let mut saved = None;
        if self.save {
            let mut s = self.saved.lock().unwrap_or_else(PoisonError::into_inner);
            let per_entry = s.iter().filter(|(n, _)| *n == e.name).count();
            if per_entry < MAX_SAVED && s.insert((e.name, f.key())) {
                let dir = fuzz_dir().join("failures");
                let p = dir.join(format!("{}-{:016x}", e.name, fnv(input)));
                match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&p, input)) {
                    Ok(()) => saved = Some(p),
                    Err(err) => eprintln!("fuzz: cannot save {}: {err}", p.display()),
                }
            }
        }
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Failure {
                entry: e.name,
                what: f.describe(),
                origin,
                saved,
            });
    }
}

fn count(st: &mut Stats, r: Result<Verdict, Fail>) -> Option<Fail> {
    st.inputs += 1;
    match r {
        Ok(Verdict::Accepted(l)) => {
            st.accepted += 1;
            *st.kinds.entry((true, l)).or_default() += 1;
        }
        Ok(Verdict::Refused(l)) => {
            st.refused += 1;
            *st.kinds.entry((false, l)).or_default() += 1;
        }
        Err(f) => {
            match f {
                Fail::Panic { .. } => st.panics += 1,
                Fail::Broken(_) => st.violations += 1,
            }
            return Some(f);
        }
    }
    None
}

/// Every saved input of `e` under `fuzz/regressions/<name>/`, sorted.
fn regressions(e: &Entry) -> Vec<PathBuf> {
    let dir = fuzz_dir().join("regressions").join(e.name);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|d| d.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs the saved inputs `files` through `e`, failures recorded (not saved again).
fn replay(e: &Entry, files: &[PathBuf], sh: &Shared) -> Stats {
    let mut st = Stats::default();
    let t = Instant::now();
    for p in files {
        let input = match std::fs::read(p) {
            Ok(b) => b,
            Err(err) => {
                eprintln!("fuzz: cannot read {}: {err}", p.display());
                continue;
            }
        };
        st.regressions += 1;
        if let Some(f) = count_failure(&mut st, run_one(e, &input)) {
            sh.failures
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Failure {
                    entry: e.name,
                    what: f.describe(),
                    origin: format!("replaying {}", p.display()),
                    saved: None,
                });
        }
    }
    st.busy = t.elapsed();
    st
}

/// Counts a saved input's failure; regressions are not counted as inputs.
fn count_failure(st: &mut Stats, r: Result<Verdict, Fail>) -> Option<Fail> {
    let f = r.err()?;
    match f {
        Fail::Panic { .. } => st.panics += 1,
        Fail::Broken(_) => st.violations += 1,
    }
    Some(f)
}

/// One job: `n` mutated inputs of `e`, from seeds or from the last accepted
/// input (a walk that stays near valid inputs), with its own seeded PRNG.
fn run_job(e: &Entry, seeds: &[Vec<u8>], job: u64, n: u64, sh: &Shared) -> Stats {
    let mut rng = Rng::seed_from_u64(mix(sh.seed ^ fnv(e.name.as_bytes()) ^ mix(job)));
    let mut st = Stats::default();
    let mut input = Vec::new();
    let mut walk: Vec<u8> = Vec::new();
    let t = Instant::now();
    for i in 0..n {
        input.clear();
        if !walk.is_empty() && rng.random_ratio(1, 4) {
            input.extend_from_slice(&walk);
        } else {
            input.extend_from_slice(&seeds[rng.random_range(0..seeds.len())]);
        }
        if !rng.random_ratio(1, 256) {
            (e.mutate)(&mut rng, &mut input, seeds);
        }
        let r = run_one(e, &input);
        let ok = matches!(r, Ok(Verdict::Accepted(_)));
        if let Some(f) = count(&mut st, r) {
            let origin = format!("seed {:#x}, job {job}, input {i}", sh.seed);
            sh.record(e, &f, &input, origin);
        } else if ok {
            walk.clone_from(&input);
        }
    }
    st.busy = t.elapsed();
    st
}

struct Options {
    seed: u64,
    iters: u64,
    only: Option<Vec<String>>,
    threads: usize,
    list: bool,
    replay: Vec<PathBuf>,
}

fn parse_u64(what: &str, s: &str) -> u64 {
    let s = s.trim().replace('_', "");
    let r = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.unwrap_or_else(|_| {
        eprintln!("fuzz: {what} {s:?} is not a number");
        std::process::exit(2)
    })
}

fn options() -> Options {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let long = env("WEFT_FUZZ_LONG").is_some_and(|v| v != "0");
    let mut o = Options {
        seed: env("WEFT_FUZZ_SEED").map_or(DEFAULT_SEED, |s| parse_u64("WEFT_FUZZ_SEED", &s)),
        iters: match env("WEFT_FUZZ_ITERS") {
            Some(s) => parse_u64("WEFT_FUZZ_ITERS", &s),
            None if long => LONG_ITERS,
            None => DEFAULT_ITERS,
        },
        only: env("WEFT_FUZZ_ONLY").map(|s| s.split(',').map(str::to_string).collect()),
        threads: env("WEFT_FUZZ_THREADS").map_or_else(
            || std::thread::available_parallelism().map_or(1, usize::from),
            |s| usize::try_from(parse_u64("WEFT_FUZZ_THREADS", &s)).unwrap_or(1),
        ),
        list: false,
        replay: vec![],
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| {
            args.next().unwrap_or_else(|| {
                eprintln!("fuzz: {name} needs a value");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--seed" => o.seed = parse_u64("--seed", &val("--seed")),
            "--iters" => o.iters = parse_u64("--iters", &val("--iters")),
            "--long" => o.iters = LONG_ITERS,
            "--only" => o.only = Some(val("--only").split(',').map(str::to_string).collect()),
            "--threads" => {
                o.threads = usize::try_from(parse_u64("--threads", &val("--threads"))).unwrap_or(1);
            }
            "--list" => o.list = true,
            "--replay" => o.replay.extend(args.by_ref().map(PathBuf::from)),
            // What cargo's test runner may pass along; nothing to do.
            "--nocapture" | "--quiet" | "-q" => {}
            other => {
                eprintln!(
                    "fuzz: unknown option {other:?}; options: --seed N, --iters N, --long, --only NAME[,NAME], --threads N, --list, --replay FILE..."
                );
                std::process::exit(2)
            }
        }
    }
    o.threads = o.threads.max(1);
    o
}

/// The entry point a saved input belongs to: its directory under
/// `regressions/`, else the longest entry name its file name starts with.
fn entry_of_file<'a>(entries: &'a [Entry], p: &Path) -> Option<&'a Entry> {
    let dir = p
        .parent()
        .and_then(Path::file_name)
        .and_then(|d| d.to_str());
    if let Some(e) = entries.iter().find(|e| Some(e.name) == dir) {
        return Some(e);
    }
    let file = p.file_name()?.to_str()?;
    entries
        .iter()
        .filter(|e| file.starts_with(&format!("{}-", e.name)))
        .max_by_key(|e| e.name.len())
}

fn main() {
    let o = options();
    let mut entries = all_entries();
    if o.list {
        for e in &entries {
            println!("{:<12} {}", e.name, e.about);
        }
        return;
    }
    if let Some(only) = &o.only {
        for n in only {
            if !entries.iter().any(|e| e.name == n) {
                eprintln!("fuzz: no entry point {n:?}; --list shows them");
                std::process::exit(2)
            }
        }
        entries.retain(|e| only.iter().any(|n| n == e.name));
    }
    quiet_panics();
    let sh = Shared {
        failures: Mutex::new(vec![]),
        saved: Mutex::new(BTreeSet::new()),
        seed: o.seed,
        save: o.replay.is_empty(),
    };
    let wall = Instant::now();
    let mut stats: Vec<Stats> = entries.iter().map(|_| Stats::default()).collect();

    if !o.replay.is_empty() {
        let all = all_entries();
        for p in &o.replay {
            let Some(e) = entry_of_file(&all, p) else {
                eprintln!(
                    "fuzz: cannot tell the entry point of {}; put it under fuzz/regressions/<entry>/",
                    p.display()
                );
                std::process::exit(2)
            };
            let st = replay(e, std::slice::from_ref(p), &sh);
            println!(
                "{}: {} ({})",
                p.display(),
                if st.panics + st.violations == 0 {
                    "ok"
                } else {
                    "FAILS"
                },
                e.name
            );
        }
        finish(&sh, &o, &[], &[], wall.elapsed());
        return;
    }

    // The saved regressions first, every run.
    for (e, st) in entries.iter().zip(stats.iter_mut()) {
        st.add(replay(e, &regressions(e), &sh));
    }

    let seeds: Vec<Vec<Vec<u8>>> = entries.iter().map(|e| (e.seeds)()).collect();
    for (e, s) in entries.iter().zip(&seeds) {
        assert!(!s.is_empty(), "entry point {} has no seeds", e.name);
    }
    // Jobs round-robin over the entry points, so that all of them progress
    // together and each is reported as it completes.
    let per = o.iters.div_ceil(CHUNK);
    let mut jobs = vec![];
    for j in 0..per {
        let n = CHUNK.min(o.iters - j * CHUNK);
        for ei in 0..entries.len() {
            jobs.push((ei, j, n));
        }
    }
    let left: Vec<AtomicUsize> = entries
        .iter()
        .map(|_| AtomicUsize::new(usize::try_from(per).unwrap_or(usize::MAX)))
        .collect();
    let next = AtomicUsize::new(0);
    let results: Vec<Mutex<Stats>> = entries.iter().map(|_| Mutex::default()).collect();
    println!(
        "fuzz: {} entry points x {} inputs, seed {:#x}, {} threads",
        entries.len(),
        o.iters,
        o.seed,
        o.threads
    );
    std::thread::scope(|s| {
        for _ in 0..o.threads {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(ei, j, n)) = jobs.get(k) else {
                        break;
                    };
                    let st = run_job(&entries[ei], &seeds[ei], j, n, &sh);
                    let mut r = results[ei].lock().unwrap_or_else(PoisonError::into_inner);
                    r.add(st);
                    if left[ei].fetch_sub(1, Ordering::AcqRel) == 1 {
                        println!(
                            "fuzz: {:<12} {:>11} inputs, {} panics, {} invariant failures ({:.1} s busy)",
                            entries[ei].name,
                            r.inputs,
                            r.panics,
                            r.violations,
                            r.busy.as_secs_f64()
                        );
                    }
                }
            });
        }
    });
    for (st, r) in stats.iter_mut().zip(results) {
        st.add(r.into_inner().unwrap_or_else(PoisonError::into_inner));
    }
    finish(&sh, &o, &entries, &stats, wall.elapsed());
}

/// Prints the table and the failures; exits non-zero when anything failed.
fn finish(sh: &Shared, o: &Options, entries: &[Entry], stats: &[Stats], wall: Duration) {
    let mut env: Vec<String> = [
        "WEFT_FUZZ_SEED",
        "WEFT_FUZZ_ITERS",
        "WEFT_FUZZ_LONG",
        "WEFT_FUZZ_ONLY",
        "WEFT_FUZZ_THREADS",
    ]
    .iter()
    .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v} ")))
    .collect();
    env.sort();
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!();
    println!(
        "command: {}cargo test --locked --profile fuzz --test fuzz{}{}",
        env.concat(),
        if args.is_empty() { "" } else { " -- " },
        args.join(" ")
    );
    println!(
        "seed: {:#x}; inputs per entry point: {}; threads: {}; wall: {:.1} s",
        o.seed,
        o.iters,
        o.threads,
        wall.as_secs_f64()
    );
    if !entries.is_empty() {
        println!();
        println!(
            "| entry point | inputs | accepted (kinds) | refused (kinds) | panics | invariant failures | regressions | busy s |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        let mut total = Stats::default();
        for (e, st) in entries.iter().zip(stats) {
            println!(
                "| {} | {} | {} ({}) | {} ({}) | {} | {} | {} | {:.1} |",
                e.name,
                st.inputs,
                st.accepted,
                st.kinds_of(true),
                st.refused,
                st.kinds_of(false),
                st.panics,
                st.violations,
                st.regressions,
                st.busy.as_secs_f64()
            );
            total.inputs += st.inputs;
            total.accepted += st.accepted;
            total.refused += st.refused;
            total.panics += st.panics;
            total.violations += st.violations;
            total.regressions += st.regressions;
            total.busy += st.busy;
        }
        println!(
            "| all | {} | {} | {} | {} | {} | {} | {:.1} |",
            total.inputs,
            total.accepted,
            total.refused,
            total.panics,
            total.violations,
            total.regressions,
            total.busy.as_secs_f64()
        );
    }
    let failures = sh.failures.lock().unwrap_or_else(PoisonError::into_inner);
    if failures.is_empty() {
        return;
    }
    println!();
    println!("{} failing inputs:", failures.len());
    let mut shown = BTreeSet::new();
    for f in failures.iter() {
        if !shown.insert((f.entry, f.what.clone())) && f.saved.is_none() {
            continue;
        }
        println!("- {}: {} ({})", f.entry, f.what, f.origin);
        if let Some(p) = &f.saved {
            println!(
                "  saved: {}\n  replay: cargo test --profile fuzz --test fuzz -- --replay {}\n  keep as a regression once fixed: cp {} fuzz/regressions/{}/",
                p.display(),
                p.display(),
                p.display(),
                f.entry
            );
        }
    }
    std::process::exit(1);
}
