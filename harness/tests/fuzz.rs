//! Property-based fuzzing of everything that reads outside input (issue 10), on stable Rust:
//! proptest with a bounded case count, plus a committed corpus of hostile inputs
//! (`harness/tests/corpus/<target>/*`) that every run replays.
//!
//! Targets: the frame decoder and the handshake (bytes from a peer), the suite parser and
//! config validation (suite files), unit parsing (rates, durations, sizes), the token-file
//! and text-directory loaders (data files), and the CSV and manifest readers (results).
//!
//! Every input runs on its own thread under [`bounded`], and fails the test when the
//! target **panics**, **takes longer** than the bound ([`TIME_BOUND`]), or **allocates**
//! more than its cap at any instant (a counting global allocator tracks the live bytes of
//! that thread; caps are stated per target as a function of the input size). Errors
//! returned by the targets are the expected outcome for hostile input; a crash, a hang or
//! a blow-up is not.
//!
//! Case count: `FOMOE_FUZZ_CASES` (default 256 per property, which keeps this file under
//! ~30 s in CI); run longer locally with e.g. `FOMOE_FUZZ_CASES=5000`.
//! Regenerating nothing: the corpus is hand-written inputs; add a file to add a case.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use harness::config::RunConfig;
use harness::data::{DataConfig, Dataset};
use harness::net::frame::{self, Expect, FrameLimits, HandshakeParams, Token};
use harness::net::PeerName;
use harness::results::{read_rows, Manifest};
use harness::suite::Suite;
use harness::telemetry::{RoundRow, RoutingRow, StepRow};
use proptest::prelude::*;

// ---------------------------------------------------------------- allocation accounting

/// Counts the live bytes allocated by the current thread while tracking is on.
struct Counting;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            let _ = LIVE.try_with(|l| {
                let v = l.get() + delta;
                l.set(v);
                let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
            });
        }
    });
}

// SAFETY: every call forwards to the system allocator unchanged; the accounting only reads
// and writes const-initialised thread-locals (no allocation, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        account(layout.size() as isize);
        // SAFETY: the caller's layout contract is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        account(layout.size() as isize);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(-(layout.size() as isize));
        // SAFETY: `ptr` came from this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        account(new_size as isize - layout.size() as isize);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// How long one input may take, whatever it is (the slowest target, a text directory of
/// a few MiB, takes milliseconds).
const TIME_BOUND: Duration = Duration::from_secs(10);

/// Run `f` on a fresh thread: `Err` when it panics, runs past [`TIME_BOUND`], or its live
/// allocations ever exceed `cap_bytes`. Returns what `f` returned otherwise.
fn bounded<T: Send + 'static>(
    what: &str,
    cap_bytes: usize,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    bounded_for(what, cap_bytes, TIME_BOUND, f)
}

fn bounded_for<T: Send + 'static>(
    what: &str,
    cap_bytes: usize,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("fuzz {what}"))
        .spawn(move || {
            LIVE.with(|l| l.set(0));
            PEAK.with(|p| p.set(0));
            TRACKING.with(|t| t.set(true));
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            TRACKING.with(|t| t.set(false));
            let peak = PEAK.with(|p| p.get()).max(0) as usize;
            let _ = tx.send((r, peak));
        })
        .map_err(|e| format!("{what}: cannot start a thread: {e}"))?;
    match rx.recv_timeout(limit) {
        Err(_) => Err(format!("{what}: no result within {limit:?} (a hang)")),
        Ok((Err(_), _)) => Err(format!("{what}: panicked")),
        Ok((Ok(_), peak)) if peak > cap_bytes => Err(format!(
            "{what}: allocated {peak} bytes at once, over the cap of {cap_bytes}"
        )),
        Ok((Ok(v), _)) => Ok(v),
    }
}

fn cases() -> u32 {
    std::env::var("FOMOE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const MIB: usize = 1 << 20;

// ---------------------------------------------------------------- the targets

/// Frame decoder: read messages until the stream ends or errs. Cap: twice the input plus
/// the decoder's 4 MiB growth step (a header may announce up to the frame limit; the
/// buffer grows with what arrives, at most 4 MiB ahead).
fn decode_frames(bytes: Vec<u8>) -> Result<String, String> {
    let cap = 2 * bytes.len() + 4 * MIB + 64 * 1024;
    bounded("frame decoder", cap, move || {
        let limits = FrameLimits {
            max_frame_bytes: 16 << 20,
            max_message_bytes: 64 << 20,
        };
        let peer = PeerName::site(1, "fuzz");
        let mut r = Cursor::new(bytes);
        let mut n = 0;
        loop {
            match frame::read_message(&mut r, limits, &peer, Duration::from_millis(50)) {
                Ok(Some(_)) => n += 1,
                Ok(None) => return format!("{n} messages, clean end"),
                Err(e) => return format!("{n} messages, then: {e}"),
            }
        }
    })
}

/// A peer's side of a stream: reads come from `input`, writes are kept (bounded by what
/// the handshake writes: two small messages).
struct Peer {
    input: Cursor<Vec<u8>>,
    output: Vec<u8>,
}

impl Read for Peer {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Peer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Handshake, accepting side and dialing side, against `bytes` from the peer. Cap: 1 MiB
/// (a hello is at most 46 + 128 bytes; nothing may grow with the input).
fn handshake(bytes: Vec<u8>) -> Result<String, String> {
    bounded("handshake", MIB, move || {
        let token = Token([3u8; 32]);
        let params = HandshakeParams {
            run_id: "fuzz",
            me: 0,
            world: 3,
            token: &token,
            max_frame_bytes: 4096,
        };
        let mut outcomes = Vec::new();
        for expect in [Expect::Accepted(&[1, 2]), Expect::Dialed(1)] {
            let mut p = Peer {
                input: Cursor::new(bytes.clone()),
                output: Vec::new(),
            };
            let r = frame::handshake(&mut p, &params, expect, "fuzz", Duration::from_millis(200));
            outcomes.push(match r {
                Ok(site) => format!("accepted as site {site}"),
                Err(e) => e.to_string(),
            });
        }
        outcomes.join(" / ")
    })
}

/// Suite parser and config validation. Cap: 512 MiB — expansion is bounded by the run
/// limit (10 000 runs), not by the input; 10 000 small configs fit in well under that.
fn parse_suite(text: String) -> Result<String, String> {
    bounded("suite parser", 512 * MIB, move || {
        let outcome = match Suite::parse(&text, Path::new("fuzz.toml")) {
            Ok(s) => {
                for r in &s.runs {
                    let _ = r.config.validate();
                    let _ = r.config.run_hash();
                }
                format!("{} runs", s.runs.len())
            }
            Err(e) => e.to_string(),
        };
        if let Ok(cfg) = toml::from_str::<RunConfig>(&text) {
            let _ = cfg.validate();
            let _ = cfg.link_matrix();
        }
        outcome
    })
}

/// Units. Cap: 64 KiB plus 4× the text (error messages quote the input).
fn parse_units(text: String) -> Result<String, String> {
    let cap = 64 * 1024 + 4 * text.len();
    bounded("units", cap, move || {
        let show = |r: Result<String, String>| r.unwrap_or_else(|e| format!("error ({e})"));
        format!(
            "{text:?}: rate {}, duration {}, bytes {}",
            show(
                harness::units::parse_rate_bps(&text)
                    .map(|v| v.to_string())
                    .map_err(|e| e.to_string())
            ),
            show(
                harness::units::parse_duration(&text)
                    .map(|v| format!("{v:?}"))
                    .map_err(|e| e.to_string())
            ),
            show(
                harness::units::parse_bytes(&text)
                    .map(|v| v.to_string())
                    .map_err(|e| e.to_string())
            ),
        )
    })
}

/// Token-file loader on `bytes` written to a file. Cap: 8× the file plus 16 MiB (tokens
/// as u16 and their split copies, the 1 MiB read chunk, the synthetic eval sets).
fn load_tokenfile(
    dir: &Path,
    bytes: Vec<u8>,
    vocab: usize,
    seq_len: usize,
) -> Result<String, String> {
    let path = dir.join("tokens.bin");
    std::fs::write(&path, &bytes).map_err(|e| e.to_string())?;
    let cap = 8 * bytes.len() + 16 * MIB;
    bounded("token-file loader", cap, move || {
        match Dataset::open(&DataConfig::tokenfile(&path, vocab), seq_len) {
            Ok(d) => format!("opened, {} domain", d.n_domains()),
            Err(e) => e.to_string(),
        }
    })
}

/// Text-directory loader on `files` (relative path → bytes). Cap: 8× the bytes + 16 MiB.
fn load_textdir(
    dir: &Path,
    files: Vec<(String, Vec<u8>)>,
    seq_len: usize,
) -> Result<String, String> {
    let root = dir.join("text");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    let mut total = 0;
    for (name, bytes) in &files {
        let p = root.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        std::fs::write(&p, bytes).map_err(|e| e.to_string())?;
        total += bytes.len();
    }
    bounded(
        "text-directory loader",
        8 * total + 16 * MIB,
        move || match Dataset::open(&DataConfig::textdir(&root), seq_len) {
            Ok(d) => format!("opened, {} domains", d.n_domains()),
            Err(e) => e.to_string(),
        },
    )
}

/// CSV readers (all three row types) and the manifest reader on `bytes`. Cap: 16× the
/// input plus 1 MiB.
fn read_results(dir: &Path, bytes: Vec<u8>) -> Result<String, String> {
    let path = dir.join("file");
    std::fs::write(&path, &bytes).map_err(|e| e.to_string())?;
    bounded("results readers", 16 * bytes.len() + MIB, move || {
        let short = |e: String| {
            e.rsplit(": ")
                .next()
                .unwrap_or("")
                .chars()
                .take(60)
                .collect::<String>()
        };
        let steps = read_rows::<StepRow>(&path).map(|r| r.rows.len());
        let _ = read_rows::<RoundRow>(&path);
        let _ = read_rows::<RoutingRow>(&path);
        let m = Manifest::read(&path);
        let _ = Manifest::read_head(&path);
        format!(
            "steps reader: {}; manifest reader: {}",
            steps.map_or_else(
                |e| format!("error ({})", short(e.to_string())),
                |n| format!("{n} rows")
            ),
            m.map_or_else(
                |e| format!("error ({})", short(e.to_string())),
                |_| "read".into()
            )
        )
    })
}

// ---------------------------------------------------------------- generators

/// Frames that are mostly valid: real messages, then cut, bit-flipped or with a forged
/// header spliced in.
fn frame_stream() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..4),
        1u32..200,
        any::<u64>(),
        prop::option::of(any::<u32>()),
    )
        .prop_map(|(msgs, max_frame, noise, forged)| {
            let mut v = Vec::new();
            for m in &msgs {
                frame::write_message(&mut v, m, max_frame).expect("in memory");
            }
            if let Some(h) = forged {
                let at = (noise as usize) % (v.len() + 1);
                v.splice(at..at, h.to_le_bytes());
            }
            if !v.is_empty() && noise % 3 == 0 {
                let i = (noise >> 8) as usize % v.len();
                v[i] ^= 1 << (noise % 8);
            }
            if noise % 5 == 0 {
                v.truncate((noise >> 16) as usize % (v.len() + 1));
            }
            v
        })
}

/// TOML-ish suite text built from knob names, values and table headers.
fn suite_text() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "method",
        "preset",
        "sites",
        "steps",
        "inner_steps",
        "seed",
        "wire_dtype",
        "rho",
        "fomoe.rho",
        "network.rate",
        "network.delay",
        "network.backend",
        "data.kind",
        "eval_sequences",
        "threads_per_site",
        "model.n_experts",
        "model.batch_size",
        "faults",
        "optim.lr",
        "name",
        "bogus",
    ]);
    let value = prop::sample::select(vec![
        "\"ddp\"",
        "\"fomoe\"",
        "\"tiny\"",
        "4",
        "0",
        "-1",
        "3",
        "1e300",
        "18446744073709551616",
        "\"100mbit\"",
        "\"-5ms\"",
        "\"sim\"",
        "[1, 2, 4]",
        "[]",
        "[\"a\", 1]",
        "true",
        "{ kind = \"x\" }",
        "[[{ site = 9, at_step = 0, kind = \"crash\" }]]",
        "\"\"",
        "nan",
        "inf",
    ]);
    let header = prop::sample::select(vec![
        "",
        "[base]",
        "[grid]",
        "[[include]]",
        "[[exclude]]",
        "[suite]",
        "[base.fomoe]",
    ]);
    prop::collection::vec((header, key, value), 0..12).prop_map(|lines| {
        lines
            .into_iter()
            .map(|(h, k, v)| format!("{h}\n{k} = {v}\n"))
            .collect()
    })
}

fn unit_text() -> impl Strategy<Value = String> {
    let number = prop::sample::select(vec![
        "0",
        "1",
        "1.5",
        "-3",
        "1e400",
        "1e-400",
        "18446744073709551616",
        "0.000000001",
        "nan",
        "inf",
        "",
        " ",
        "1.2.3",
        "٣",
    ]);
    let unit = prop::sample::select(vec![
        "", "bit", "kbit", "mbit", "gbit", "tbit", "bps", "ms", "us", "µs", "s", "min", "h", "ns",
        "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "x",
    ]);
    (number, unit, "[ \\t]{0,2}", any::<bool>()).prop_map(|(n, u, sp, upper)| {
        let s = format!("{n}{sp}{u}");
        if upper {
            s.to_uppercase()
        } else {
            s
        }
    })
}

// ---------------------------------------------------------------- properties

fn check(r: Result<String, String>) -> Result<(), TestCaseError> {
    r.map(|_| ()).map_err(TestCaseError::fail)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn frame_decoder_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        check(decode_frames(bytes))?;
    }

    #[test]
    fn frame_decoder_survives_damaged_streams(bytes in frame_stream()) {
        check(decode_frames(bytes))?;
    }

    #[test]
    fn handshake_survives_arbitrary_bytes(
        prefix in prop::sample::select(vec![Vec::new(), b"FMOE\x01\x00".to_vec()]),
        rest in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        let mut bytes = prefix;
        bytes.extend(rest);
        check(handshake(bytes))?;
    }

    #[test]
    fn suite_parser_survives_arbitrary_text(text in "\\PC{0,300}") {
        check(parse_suite(text))?;
    }

    #[test]
    fn suite_parser_survives_knob_soup(text in suite_text()) {
        check(parse_suite(text))?;
    }

    #[test]
    fn units_survive_arbitrary_text(text in unit_text()) {
        check(parse_units(text))?;
    }

    #[test]
    fn units_survive_any_string(text in "\\PC{0,64}") {
        check(parse_units(text))?;
    }

    #[test]
    fn tokenfile_loader_survives_arbitrary_files(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        vocab in prop::sample::select(vec![1usize, 2, 255, 256, 300, 65536]),
        seq_len in 1usize..64,
    ) {
        let d = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        check(load_tokenfile(d.path(), bytes, vocab, seq_len))?;
    }

    #[test]
    fn textdir_loader_survives_arbitrary_trees(
        files in prop::collection::vec(
            ("(a|b|\\.h|c/d|a/e|z)", prop::collection::vec(any::<u8>(), 0..600)),
            0..5,
        ),
        seq_len in 1usize..64,
    ) {
        let d = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        // A name can be both a file and a directory's prefix ("a" and "a/e"): keep the
        // first, as a file system would refuse the second.
        let mut seen: Vec<String> = Vec::new();
        let files: Vec<(String, Vec<u8>)> = files
            .into_iter()
            .filter(|(n, _)| {
                let clash = seen.iter().any(|s| s == n || n.starts_with(&format!("{s}/")) || s.starts_with(&format!("{n}/")));
                if !clash { seen.push(n.clone()); }
                !clash
            })
            .collect();
        check(load_textdir(d.path(), files, seq_len))?;
    }

    #[test]
    fn results_readers_survive_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let d = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        check(read_results(d.path(), bytes))?;
    }

    #[test]
    fn results_readers_survive_damaged_csv(
        rows in prop::collection::vec(prop::collection::vec("[-0-9a-z.,\"eE ]{0,12}", 0..25), 0..20),
        header in prop::sample::select(vec!["steps", "rounds", "routing", "garbage"]),
    ) {
        let head = match header {
            "steps" => "site,step,round,loss,ce,balance,lr,grad_norm,tokens,data_ms,compute_ms,comm_ms,comm_cpu_ms,opt_ms,wall_ms,clock_s,payload_sent,payload_recv,framing_sent,framing_recv,skip_rate",
            "rounds" => "round,step,domain,eval_loss,floor,local_eval_loss,payload_bytes_total,framing_bytes_total,eval_bytes_total,clock_s,sync_ms",
            "routing" => "round,layer,saturation_topk,saturation_top1,overlap_prev_topk,overlap_prev_top1,cross_site_agreement_topk,cross_site_agreement_top1,cv,max_vio,norm_entropy,dead_experts,kl_uniform,skip_rate",
            _ => "a,b",
        };
        let mut text = format!("{head}\n");
        for r in rows {
            text.push_str(&r.join(","));
            text.push('\n');
        }
        let d = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        check(read_results(d.path(), text.into_bytes()))?;
    }
}

// ---------------------------------------------------------------- the committed corpus

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("corpus")
        .join(target);
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "{}: empty corpus", dir.display());
    out
}

/// Replays every corpus file of `target` through `run`, naming the file of a failure, and
/// prints a table of the outcomes (`cargo test --test fuzz corpus -- --nocapture`).
fn replay(target: &str, run: impl Fn(&Path, Vec<u8>) -> Result<String, String>) {
    let mut failures = Vec::new();
    for (path, bytes) in corpus(target) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        match run(&path, bytes) {
            Ok(outcome) => println!("| {target} | `{name}` | {} |", outcome.replace('|', "/")),
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Corpus files are text with `\xHH` escapes for bytes (so they can be read and reviewed).
fn unescape(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'x') && i + 3 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&String::from_utf8_lossy(&bytes[i + 2..i + 4]), 16) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Expands `@repeat N <text>` lines (a long hostile input kept short in the repository):
/// the line becomes `<text>` N times, with no newline after it.
fn expand(bytes: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        match line.strip_prefix("@repeat ") {
            Some(rest) => {
                let (n, what) = rest.split_once(' ').unwrap_or((rest, ""));
                let n: usize = n.trim().parse().unwrap_or(0);
                out.push_str(&what.replace("\\n", "\n").trim_end_matches('\n').repeat(n));
            }
            None => out.push_str(line),
        }
    }
    out.into_bytes()
}

#[test]
fn corpus_frames() {
    replay("frames", |_, b| decode_frames(unescape(&expand(b))));
}

#[test]
fn corpus_handshakes() {
    replay("handshakes", |_, b| handshake(unescape(&expand(b))));
}

#[test]
fn corpus_suites() {
    replay("suites", |_, b| {
        parse_suite(String::from_utf8_lossy(&expand(b)).into_owned())
    });
}

#[test]
fn corpus_units() {
    replay("units", |_, b| {
        let mut out = Vec::new();
        for line in String::from_utf8_lossy(&b).lines() {
            out.push(parse_units(line.to_string())?);
        }
        Ok(out.join("; "))
    });
}

#[test]
fn corpus_tokenfiles() {
    let d = tempfile::tempdir().unwrap();
    replay("tokenfiles", |_, b| {
        let b = unescape(&expand(b));
        let mut out = Vec::new();
        for vocab in [1, 256, 65536] {
            out.push(format!(
                "vocab {vocab}: {}",
                load_tokenfile(d.path(), b.clone(), vocab, 8)?
            ));
        }
        Ok(out.join("; "))
    });
}

#[test]
fn corpus_results() {
    let d = tempfile::tempdir().unwrap();
    replay("results", |_, b| {
        read_results(d.path(), unescape(&expand(b)))
    });
}

/// Builds a hostile tree under the given root.
type TreeBuilder = Box<dyn Fn(&Path)>;

/// Text directories that are hostile as trees, not as bytes: empty, hidden-only, deep,
/// a symlink loop, non-UTF-8 names, many empty files.
#[test]
fn corpus_textdirs() {
    let d = tempfile::tempdir().unwrap();
    let trees: Vec<(&str, TreeBuilder)> = vec![
        ("empty", Box::new(|_: &Path| {})),
        (
            "hidden only",
            Box::new(|r: &Path| std::fs::write(r.join(".git"), b"x".repeat(1000)).unwrap()),
        ),
        (
            "deep",
            Box::new(|r: &Path| {
                let mut p = r.to_path_buf();
                for i in 0..60 {
                    p = p.join(format!("d{i}"));
                }
                std::fs::create_dir_all(&p).unwrap();
                std::fs::write(p.join("f"), b"deep".repeat(100)).unwrap();
            }),
        ),
        (
            "symlink loop",
            Box::new(|r: &Path| {
                std::fs::create_dir_all(r.join("a")).unwrap();
                std::fs::write(r.join("a").join("t"), b"abc".repeat(200)).unwrap();
                std::os::unix::fs::symlink(r, r.join("a").join("loop")).unwrap();
                std::os::unix::fs::symlink(r.join("self"), r.join("self")).unwrap();
            }),
        ),
        (
            "non-utf8 name",
            Box::new(|r: &Path| {
                use std::os::unix::ffi::OsStrExt;
                let name = std::ffi::OsStr::from_bytes(b"\xff\xfe.txt");
                std::fs::write(r.join(name), b"bytes".repeat(100)).unwrap();
            }),
        ),
        (
            "many empty files",
            Box::new(|r: &Path| {
                for i in 0..2000 {
                    std::fs::write(r.join(format!("e{i}")), b"").unwrap();
                }
            }),
        ),
    ];
    let mut failures = Vec::new();
    for (name, build) in trees {
        let root = d.path().join("tree");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        build(&root);
        let r = bounded(name, 32 * MIB, move || {
            match Dataset::open(&DataConfig::textdir(&root), 8) {
                Ok(d) => format!("opened, {} domains", d.n_domains()),
                Err(e) => e.to_string(),
            }
        });
        match r {
            Ok(outcome) => println!("| textdirs | {name} | {outcome} |"),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The harness itself: an allocation over the cap, a hang and a panic are each caught (so
/// a target that misbehaves fails its property instead of passing unnoticed).
#[test]
fn the_bounds_catch_what_they_promise_to() {
    assert!(bounded("big", MIB, || vec![1u8; 2 * MIB])
        .unwrap_err()
        .contains("over the cap"));
    assert!(bounded("ok", 4 * MIB, || vec![1u8; 2 * MIB].len()).is_ok());
    assert!(bounded("boom", MIB, || panic!("x"))
        .unwrap_err()
        .contains("panicked"));
    let slow = bounded_for("slow", MIB, Duration::from_millis(100), || {
        std::thread::sleep(Duration::from_millis(400))
    });
    assert!(slow.unwrap_err().contains("a hang"));
}
