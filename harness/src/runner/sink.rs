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
use crate::results::run_dir::ROUNDS_FILE;
use crate::results::{site_steps_path, CsvSink};
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

/// Per-site files in a run directory.
pub struct FileSink {
    dir: PathBuf,
    site: usize,
    steps: CsvSink<StepRow>,
    rounds: Option<CsvSink<RoundRow>>,
    probe: BufWriter<File>,
}

impl FileSink {
    /// `append`: continue the files of an interrupted run (resume).
    pub fn create(dir: &Path, site: usize, append: bool) -> Result<Self> {
        fn open<T: Serialize + Default>(p: PathBuf, append: bool) -> Result<CsvSink<T>> {
            Ok(if append {
                CsvSink::append(p)?
            } else {
                CsvSink::create(p)?
            })
        }
        let steps = open(site_steps_path(dir, site), append)?;
        let rounds = if site == 0 {
            Some(open(dir.join(ROUNDS_FILE), append)?)
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
        Ok(self.steps.push(row)?)
    }
    fn rounds(&mut self, rows: &[RoundRow]) -> Result<()> {
        if let Some(r) = &mut self.rounds {
            for row in rows {
                r.push(row)?;
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
        crate::results::write_atomic(
            &self.dir.join(format!("site{}.json", self.site)),
            serde_json::to_string_pretty(report)?.as_bytes(),
        )?;
        Ok(())
    }
}
