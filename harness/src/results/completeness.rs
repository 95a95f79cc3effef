//! What a complete run holds, and whether its files still hold it.
//!
//! **Recorded** ([`record_files`], by [`super::RunDir::finish`]): for every result file of
//! the run directory, its size in bytes, its SHA-256 and, for CSV files, its row count
//! (lines after the header). The record goes into `manifest.json` (`files`) in the same
//! atomic write that makes the run `complete`. Result files are the `*.csv`, `*.json`,
//! `*.hgrm` and `*.bin` files (the manifest itself aside); inputs and scratch are not
//! results and may be removed without making a run incomplete: `init.safetensors`,
//! checkpoints (`*.safetensors`), raw probe dumps (`probe-site<i>.jsonl`), worker logs and
//! error notes (`*.log`, `*.txt`), temporaries (`.*`), and network configs
//! (`net-site<i>.json`, which would carry the run's secret).
//!
//! **Expected** ([`ExpectedRows`], given by the executor before the run starts): the rows
//! a complete run writes, from its config alone, where the runner promises them:
//! - `steps.csv` = steps × sites (one row per site per inner step);
//! - `rounds.csv` = evals × domains, evals = ⌈R / eval_every_rounds⌉ with R = steps / H
//!   (every `eval_every_rounds`-th round and always the last);
//! - `routing.csv` = evals × layers.
//!
//! A run whose rows differ from what is expected is finished `failed` (e.g. another process
//! wrote into it, or a site stopped early without an error), naming the file and both
//! counts.
//!
//! **Checked** ([`check_files`], by [`super::run_state`] and [`super::summarize`]): a run
//! whose manifest says `complete` is complete only if every recorded file is present with
//! its recorded size and hash; otherwise it is `incomplete` (the disagreements are named),
//! kept out of every table and figure, and re-run by `fomoe run`. Degenerate cases: a
//! manifest written before records existed (no `files`) is checked only for CSV files
//! whose last line is cut short; files added after the run are not results of the run and
//! are ignored.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::manifest::MANIFEST_FILE;
use super::run_dir::{ROUNDS_FILE, ROUTING_FILE, STEPS_FILE};
use super::ResultsError;
use crate::config::RunConfig;

/// Size, hash and (for CSV) row count of one result file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    pub bytes: u64,
    /// Lines after the header (CSV files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Hex SHA-256 of the whole file.
    pub sha256: String,
}

/// The record of a run directory: file name → record, sorted by name.
pub type FileRecords = BTreeMap<String, FileRecord>;

/// Whether `name` (a file directly inside a run directory) is a result of the run.
pub fn is_result_file(name: &str) -> bool {
    // net-site<i>.json: a site's network config, which holds the run's secret token.
    if name.starts_with('.') || name == MANIFEST_FILE || name.starts_with("net-site") {
        return false;
    }
    [".csv", ".json", ".hgrm", ".bin"]
        .iter()
        .any(|ext| name.ends_with(ext))
}

/// Size, SHA-256 and newline count of a file, read once in 1 MiB blocks.
fn digest_file(path: &Path) -> std::io::Result<(u64, String, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let (mut bytes, mut newlines) = (0u64, 0u64);
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
        newlines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
    let hex = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((bytes, hex, newlines))
}

/// Record every result file of `dir` (see the module doc).
pub fn record_files(dir: &Path) -> Result<FileRecords, ResultsError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| ResultsError::Io { path, error }
    };
    let mut out = FileRecords::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !is_result_file(&name) || !entry.file_type().map_err(io(dir))?.is_file() {
            continue;
        }
        let path = entry.path();
        let (bytes, sha256, newlines) = digest_file(&path).map_err(io(&path))?;
        let rows = name.ends_with(".csv").then(|| newlines.saturating_sub(1));
        out.insert(
            name,
            FileRecord {
                bytes,
                rows,
                sha256,
            },
        );
    }
    Ok(out)
}

/// Every way the files of `dir` disagree with `record`, one short sentence each (empty when
/// they agree). Without a record (`None`): CSV files whose last line is cut short.
pub fn check_files(dir: &Path, record: Option<&FileRecords>) -> Vec<String> {
    let Some(record) = record else {
        return cut_csv_files(dir);
    };
    let mut problems = Vec::new();
    for (name, want) in record {
        let path = dir.join(name);
        match digest_file(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                problems.push(format!("{name} is missing"))
            }
            Err(e) => problems.push(format!("{name} cannot be read: {e}")),
            Ok((bytes, _, _)) if bytes != want.bytes => problems.push(format!(
                "{name} holds {bytes} bytes, the complete run wrote {}",
                want.bytes
            )),
            Ok((_, sha, _)) if sha != want.sha256 => problems.push(format!(
                "{name} was changed after the run (SHA-256 differs, same size)"
            )),
            Ok(_) => {}
        }
    }
    problems
}

fn cut_csv_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| is_result_file(n) && n.ends_with(".csv"))
        .collect();
    names.sort();
    names
        .into_iter()
        .filter(|n| {
            std::fs::read(dir.join(n)).is_ok_and(|b| !b.is_empty() && b.last() != Some(&b'\n'))
        })
        .map(|n| format!("{n} ends in a cut line"))
        .collect()
}

/// Rows a complete run writes to its CSV files (see the module doc); `None` = no promise.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpectedRows {
    pub steps: Option<u64>,
    pub rounds: Option<u64>,
    pub routing: Option<u64>,
}

impl ExpectedRows {
    /// What the training runner writes for `cfg` on a dataset of `domains` domains and a
    /// model of `layers` layers.
    pub fn for_training(cfg: &RunConfig, domains: usize, layers: usize) -> ExpectedRows {
        let rounds = cfg.rounds() as u64;
        let every = cfg.eval_every_rounds.max(1) as u64;
        let evals = rounds.div_ceil(every);
        ExpectedRows {
            steps: Some(cfg.steps as u64 * cfg.sites as u64),
            rounds: Some(evals * domains as u64),
            routing: Some(evals * layers as u64),
        }
    }

    /// Files whose row count in `record` differs from the expectation, one sentence each.
    pub fn disagreements(&self, record: &FileRecords) -> Vec<String> {
        let mut out = Vec::new();
        for (name, want, what) in [
            (STEPS_FILE, self.steps, "steps × sites"),
            (ROUNDS_FILE, self.rounds, "evals × domains"),
            (ROUTING_FILE, self.routing, "evals × layers"),
        ] {
            let Some(want) = want else { continue };
            let got = record.get(name).and_then(|r| r.rows);
            if got != Some(want) {
                out.push(match got {
                    Some(got) => {
                        format!("{name} holds {got} rows, a complete run holds {want} ({what})")
                    }
                    None => format!("{name} is missing, a complete run holds {want} rows ({what})"),
                });
            }
        }
        out
    }
}
