//! Where a site's telemetry goes: per-site files in the run directory, flushed per row.
//!
//! - `steps-site<i>.csv`: [`StepRow`]s of site i (merged into `steps.csv` at the end);
//! - `rounds.csv`: [`RoundRow`]s, written by site 0 only;
//! - `probe-site<i>.jsonl`: one JSON object per (round, kind, domain, layer) with the probe
//!   top-k expert ids (row-major [tokens, k]); kind `local` = the site's model before the
//!   sync, `global` = the global model after it (site 0);
//! - `site<i>.json`: the [`SiteReport`] (memory held, bytes, times), written atomically.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::site::SiteReport;
use crate::telemetry::{RoundRow, StepRow};

pub trait SiteSink {
    fn step(&mut self, row: &StepRow) -> Result<()>;
    fn rounds(&mut self, rows: &[RoundRow]) -> Result<()>;
    fn probe(&mut self, round: usize, kind: &str, ids: &[Vec<Vec<i64>>]) -> Result<()>;
    fn finish(&mut self, report: &SiteReport) -> Result<()>;
}

/// Discards everything (benchmarks).
pub struct NullSink;

impl SiteSink for NullSink {
    fn step(&mut self, _: &StepRow) -> Result<()> {
        Ok(())
    }
    fn rounds(&mut self, _: &[RoundRow]) -> Result<()> {
        Ok(())
    }
    fn probe(&mut self, _: usize, _: &str, _: &[Vec<Vec<i64>>]) -> Result<()> {
        Ok(())
    }
    fn finish(&mut self, _: &SiteReport) -> Result<()> {
        Ok(())
    }
}

/// A CSV file with a header, flushed after every row.
pub struct CsvFile<T: Serialize> {
    w: csv::Writer<File>,
    _t: std::marker::PhantomData<T>,
}

impl<T: Serialize> CsvFile<T> {
    pub fn create(path: &Path) -> Result<Self> {
        Self::open(path, false)
    }
    /// `append`: continue an existing file (no second header) when it exists.
    pub fn open(path: &Path, append: bool) -> Result<Self> {
        let exists = append && path.exists();
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(exists)
            .truncate(!exists)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let w = csv::WriterBuilder::new()
            .has_headers(!exists)
            .from_writer(f);
        Ok(Self {
            w,
            _t: std::marker::PhantomData,
        })
    }
    pub fn write(&mut self, row: &T) -> Result<()> {
        self.w.serialize(row)?;
        self.w.flush()?;
        Ok(())
    }
}

/// Write `bytes` to `path` atomically: temporary file, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(name);
    {
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

/// Per-site files in a run directory.
pub struct FileSink {
    dir: PathBuf,
    site: usize,
    steps: CsvFile<StepRow>,
    rounds: Option<CsvFile<RoundRow>>,
    probe: BufWriter<File>,
}

impl FileSink {
    /// `append`: continue the files of an interrupted run (resume).
    pub fn create(dir: &Path, site: usize, append: bool) -> Result<Self> {
        let steps = CsvFile::open(&dir.join(format!("steps-site{site}.csv")), append)?;
        let rounds = if site == 0 {
            Some(CsvFile::open(&dir.join("rounds.csv"), append)?)
        } else {
            None
        };
        let p = dir.join(format!("probe-site{site}.jsonl"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&p);
        let probe = BufWriter::new(f.with_context(|| format!("creating {}", p.display()))?);
        Ok(Self {
            dir: dir.to_path_buf(),
            site,
            steps,
            rounds,
            probe,
        })
    }
}

#[derive(Serialize, serde::Deserialize)]
pub struct ProbeRecord {
    pub round: usize,
    pub kind: String,
    pub site: usize,
    pub domain: usize,
    pub layer: usize,
    pub ids: Vec<i64>,
}

impl SiteSink for FileSink {
    fn step(&mut self, row: &StepRow) -> Result<()> {
        self.steps.write(row)
    }
    fn rounds(&mut self, rows: &[RoundRow]) -> Result<()> {
        if let Some(r) = &mut self.rounds {
            for row in rows {
                r.write(row)?;
            }
        }
        Ok(())
    }
    fn probe(&mut self, round: usize, kind: &str, ids: &[Vec<Vec<i64>>]) -> Result<()> {
        for (domain, layers) in ids.iter().enumerate() {
            for (layer, v) in layers.iter().enumerate() {
                let rec = ProbeRecord {
                    round,
                    kind: kind.into(),
                    site: self.site,
                    domain,
                    layer,
                    ids: v.clone(),
                };
                serde_json::to_writer(&mut self.probe, &rec)?;
                self.probe.write_all(b"\n")?;
            }
        }
        self.probe.flush()?;
        Ok(())
    }
    fn finish(&mut self, report: &SiteReport) -> Result<()> {
        write_atomic(
            &self.dir.join(format!("site{}.json", self.site)),
            serde_json::to_string_pretty(report)?.as_bytes(),
        )
    }
}
