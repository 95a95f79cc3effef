//! Where a site's telemetry goes: per-site files in the run directory, flushed per row, and
//! the evaluator's round rows into the run's one rounds sink.
//!
//! - `steps-site<i>.csv`: [`StepRow`]s of site i (merged into `steps.csv` at the end);
//! - round rows ([`RoundRow`], byte totals already derived by the evaluator): through a
//!   [`RoundsOut`]: the run directory's `rounds.csv` sink itself when the sites are threads of
//!   the process that owns it ([`SharedRounds`]), or one line per push on stdout
//!   ([`StdoutRounds`], `FOMOE-ROUNDS <json>`) from a worker process, which the orchestrator
//!   reads and pushes into that sink ([`parse_rounds_line`]). [`FileSink::create`] alone
//!   (tests, single-site tools) writes `rounds.csv` in the directory for site 0;
//! - `probe-site<i>.jsonl`: one JSON object per (round, kind, domain, layer) with the probe
//!   top-k expert ids (row-major [tokens, k]); kind `local` = the site's model before the
//!   sync, `global` = the global model after it (site 0);
//! - `participation-site<i>.csv`: one [`ParticipationRow`] per round (merged into
//!   `participation.csv` at the end);
//! - `site<i>.json`: the [`SiteReport`] (memory held, bytes, times), written atomically.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde::Serialize;

use super::site::SiteReport;
use crate::results::run_dir::ROUNDS_FILE;
use crate::results::{site_steps_path, CsvSink};
use crate::scenario::participation::{site_participation_path, ParticipationRow};
use crate::telemetry::{RoundRow, StepRow};

/// A site's telemetry (a network sink gathering rows at one rank implements it too).
pub trait SiteSink {
    fn step(&mut self, row: &StepRow) -> Result<()>;
    fn rounds(&mut self, rows: &[RoundRow]) -> Result<()>;
    fn probe(&mut self, round: usize, kind: &str, ids: &[Vec<Vec<i64>>]) -> Result<()>;
    /// The site's part in a round (participation.csv). Default: discarded.
    fn participation(&mut self, _row: &ParticipationRow) -> Result<()> {
        Ok(())
    }
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

/// Where the evaluator's round rows go (see the module doc).
pub trait RoundsOut: Send {
    fn push(&mut self, rows: &[RoundRow]) -> Result<()>;
}

impl RoundsOut for CsvSink<RoundRow> {
    fn push(&mut self, rows: &[RoundRow]) -> Result<()> {
        for r in rows {
            CsvSink::push(self, r)?;
        }
        Ok(())
    }
}

/// The run's rounds sink, shared by the site threads of this process.
pub struct SharedRounds<'s, 'r>(pub &'s Mutex<&'r mut CsvSink<RoundRow>>);

impl RoundsOut for SharedRounds<'_, '_> {
    fn push(&mut self, rows: &[RoundRow]) -> Result<()> {
        let mut sink = self.0.lock().unwrap_or_else(|e| e.into_inner());
        RoundsOut::push(&mut **sink, rows)
    }
}

/// The prefix of a stdout line carrying round rows from a worker to the orchestrator.
pub const ROUNDS_LINE_PREFIX: &str = "FOMOE-ROUNDS ";

/// Round rows of a worker process, one stdout line per push (flushed).
pub struct StdoutRounds;

impl RoundsOut for StdoutRounds {
    fn push(&mut self, rows: &[RoundRow]) -> Result<()> {
        let line = format!("{ROUNDS_LINE_PREFIX}{}\n", serde_json::to_string(rows)?);
        let mut out = std::io::stdout().lock();
        out.write_all(line.as_bytes())
            .and_then(|_| out.flush())
            .context("writing round rows to the orchestrator (stdout)")
    }
}

/// The round rows of one [`StdoutRounds`] line; `None` for any other line.
pub fn parse_rounds_line(line: &str) -> Option<Result<Vec<RoundRow>>> {
    let json = line.strip_prefix(ROUNDS_LINE_PREFIX)?;
    Some(serde_json::from_str(json).context("a worker's round rows"))
}

/// Per-site files in a run directory, and the round rows' destination.
pub struct FileSink<'a> {
    dir: PathBuf,
    site: usize,
    steps: CsvSink<StepRow>,
    rounds: Option<Box<dyn RoundsOut + 'a>>,
    probe: BufWriter<File>,
    participation: CsvSink<ParticipationRow>,
}

impl FileSink<'static> {
    /// `append`: continue the files of an interrupted run (resume). Site 0 writes round
    /// rows to `rounds.csv` in `dir`.
    pub fn create(dir: &Path, site: usize, append: bool) -> Result<Self> {
        let rounds: Option<Box<dyn RoundsOut>> = if site == 0 {
            let p = dir.join(ROUNDS_FILE);
            Some(Box::new(if append {
                CsvSink::<RoundRow>::append(p)?
            } else {
                CsvSink::<RoundRow>::create(p)?
            }))
        } else {
            None
        };
        FileSink::with_rounds(dir, site, append, rounds)
    }
}

impl<'a> FileSink<'a> {
    /// Per-site files in `dir`; round rows (if this site writes any) to `rounds`.
    pub fn with_rounds(
        dir: &Path,
        site: usize,
        append: bool,
        rounds: Option<Box<dyn RoundsOut + 'a>>,
    ) -> Result<Self> {
        let steps_path = site_steps_path(dir, site);
        let steps = if append {
            CsvSink::append(steps_path)?
        } else {
            CsvSink::create(steps_path)?
        };
        let p = dir.join(format!("probe-site{site}.jsonl"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&p);
        let probe = BufWriter::new(f.with_context(|| format!("creating {}", p.display()))?);
        let participation_path = site_participation_path(dir, site);
        let participation = if append {
            CsvSink::append(participation_path)?
        } else {
            CsvSink::create(participation_path)?
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            site,
            steps,
            rounds,
            probe,
            participation,
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

impl SiteSink for FileSink<'_> {
    fn step(&mut self, row: &StepRow) -> Result<()> {
        Ok(self.steps.push(row)?)
    }
    fn rounds(&mut self, rows: &[RoundRow]) -> Result<()> {
        match &mut self.rounds {
            Some(r) => r.push(rows),
            None => anyhow::bail!("site {}: no destination for round rows", self.site),
        }
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
    fn participation(&mut self, row: &ParticipationRow) -> Result<()> {
        Ok(self.participation.push(row)?)
    }
    fn finish(&mut self, report: &SiteReport) -> Result<()> {
        crate::results::write_atomic(
            &self.dir.join(format!("site{}.json", self.site)),
            serde_json::to_string_pretty(report)?.as_bytes(),
        )?;
        Ok(())
    }
}
