//! Links that change over time, on the `sim` backend: a bandwidth trace and scripted link
//! changes (faults of kind `link`), on top of the static [`LinkMatrix`].
//!
//! **Trace** (`[network.trace]`): a CSV file, first column `time_s` (seconds from the run's
//! start, the first row at 0, strictly increasing), then one column per directed link named
//! `i->j`, or `*` for every link, each cell a rate (`100mbit`). A row's rates hold until the
//! next row. `mode = "hold"`: after the last row its rates hold for ever; `mode = "loop"`:
//! the trace repeats with `period` (longer than the last row's time), i.e. the rate at time
//! t is the trace's at t mod period. A `i->j` column wins over `*` for that link.
//!
//! **Link changes**: from its time on, a change sets the link's rate and/or delay; a rate
//! change wins over the trace from then on.
//!
//! **Transmission across a change.** A message handed to link i → j at time t occupies it
//! from `start = max(t, busy until)`; its `w` wire bytes take the rate in effect piece by
//! piece: in each interval between rate changes it moves rate × length bits, and it
//! finishes when all `8·w` bits have moved (rounded up to the nanosecond, as
//! [`LinkSpec::serialisation_time`] does for one constant rate, which this reduces to
//! without changes). It arrives at `finish + delay(finish) ± jitter`.
//!
//! Errors are one line naming the file, the line and the value: a missing file, a header
//! without `time_s`, a column naming no link of the run, an unsorted or negative time, a
//! rate that does not parse, a period not longer than the trace.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::link::{LinkMatrix, LinkSpec};
use crate::scenario::plan::LinkChange;
use crate::units::{parse_duration, parse_rate_bps};

/// `[network.trace]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceConfig {
    /// The CSV file (relative paths: to the working directory).
    pub file: PathBuf,
    #[serde(default)]
    pub mode: TraceMode,
    /// Loop period, e.g. "60s" (`loop` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceMode {
    /// The last row's rates hold after it.
    #[default]
    Hold,
    /// The trace repeats with its period.
    Loop,
}

/// Which links a trace column sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Column {
    All,
    Pair(usize, usize),
}

/// A bandwidth trace, read and checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Trace {
    times: Vec<Duration>,
    /// Column → rate per row.
    columns: BTreeMap<Column, Vec<u64>>,
    /// `Some` in loop mode.
    period: Option<Duration>,
}

impl Trace {
    /// Read `cfg.file` for a run of `world` endpoints; errors are one line (see the module doc).
    pub fn load(cfg: &TraceConfig, world: usize) -> Result<Self, String> {
        let file = cfg.file.display().to_string();
        let text = std::fs::read_to_string(&cfg.file).map_err(|e| format!("{file}: {e}"))?;
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        let headers = reader
            .headers()
            .map_err(|e| format!("{file}: header: {e}"))?
            .clone();
        if headers.get(0) != Some("time_s") {
            return Err(format!("{file}: the first column must be `time_s`"));
        }
        let mut cols = Vec::new();
        for h in headers.iter().skip(1) {
            let col = if h == "*" {
                Column::All
            } else {
                let pair = h.split_once("->").and_then(|(a, b)| {
                    Some((
                        a.trim().parse::<usize>().ok()?,
                        b.trim().parse::<usize>().ok()?,
                    ))
                });
                match pair {
                    Some((a, b)) if a < world && b < world && a != b => Column::Pair(a, b),
                    _ => {
                        return Err(format!(
                            "{file}: column `{h}` names no link of this run (use `i->j` with i ≠ j below {world}, or `*`)"
                        ))
                    }
                }
            };
            if cols.contains(&col) {
                return Err(format!("{file}: column `{h}` is given twice"));
            }
            cols.push(col);
        }
        if cols.is_empty() {
            return Err(format!("{file}: no rate column"));
        }
        let mut times: Vec<Duration> = Vec::new();
        let mut columns: BTreeMap<Column, Vec<u64>> =
            cols.iter().map(|c| (*c, Vec::new())).collect();
        for (n, rec) in reader.records().enumerate() {
            let line = n + 2;
            let rec = rec.map_err(|e| format!("{file}: line {line}: {e}"))?;
            let t_text = rec.get(0).unwrap_or("");
            let secs: f64 = t_text
                .parse()
                .map_err(|_| format!("{file}: line {line}: time_s `{t_text}` is not a number"))?;
            if !(secs.is_finite() && secs >= 0.0) {
                return Err(format!("{file}: line {line}: time_s {t_text} is negative"));
            }
            let t = Duration::from_secs_f64(secs);
            if let Some(&last) = times.last() {
                if t <= last {
                    return Err(format!(
                        "{file}: line {line}: time_s {t_text} is not after the previous row (times must increase)"
                    ));
                }
            } else if t != Duration::ZERO {
                return Err(format!(
                    "{file}: line {line}: the first row must be at time_s 0"
                ));
            }
            if rec.len() != cols.len() + 1 {
                return Err(format!(
                    "{file}: line {line}: {} cells, the header has {}",
                    rec.len(),
                    cols.len() + 1
                ));
            }
            for (c, cell) in cols.iter().zip(rec.iter().skip(1)) {
                let rate = parse_rate_bps(cell).map_err(|e| format!("{file}: line {line}: {e}"))?;
                LinkSpec {
                    rate_bps: rate,
                    delay: Duration::ZERO,
                    jitter: Duration::ZERO,
                }
                .validate()
                .map_err(|e| format!("{file}: line {line}: {e}"))?;
                columns.get_mut(c).expect("column").push(rate);
            }
            times.push(t);
        }
        if times.is_empty() {
            return Err(format!("{file}: no rows"));
        }
        let period = match (cfg.mode, &cfg.period) {
            (TraceMode::Hold, None) => None,
            (TraceMode::Hold, Some(_)) => {
                return Err(format!("{file}: `period` applies to mode = \"loop\""))
            }
            (TraceMode::Loop, None) => {
                return Err(format!("{file}: mode = \"loop\" needs a `period`"))
            }
            (TraceMode::Loop, Some(p)) => {
                let d = parse_duration(p).map_err(|e| format!("{file}: period: {e}"))?;
                let last = *times.last().expect("rows");
                if d <= last {
                    return Err(format!(
                        "{file}: period {p} must be longer than the last row's time ({:.3} s)",
                        last.as_secs_f64()
                    ));
                }
                Some(d)
            }
        };
        Ok(Trace {
            times,
            columns,
            period,
        })
    }

    fn column_for(&self, from: usize, to: usize) -> Option<&Vec<u64>> {
        self.columns
            .get(&Column::Pair(from, to))
            .or_else(|| self.columns.get(&Column::All))
    }

    /// Whether the trace sets link `from → to`.
    pub fn covers(&self, from: usize, to: usize) -> bool {
        self.column_for(from, to).is_some()
    }

    /// The trace's rate for `from → to` at `t` (None when no column sets the link).
    fn rate(&self, from: usize, to: usize, t: Duration) -> Option<u64> {
        let col = self.column_for(from, to)?;
        let tau = match self.period {
            Some(p) => Duration::from_nanos((t.as_nanos() % p.as_nanos()) as u64),
            None => t,
        };
        let i = self.times.partition_point(|&x| x <= tau).saturating_sub(1);
        Some(col[i])
    }

    /// The first time after `t` at which the trace's rates change.
    fn next_change(&self, t: Duration) -> Option<Duration> {
        match self.period {
            None => self.times.iter().copied().find(|&x| x > t),
            Some(p) => {
                let base =
                    Duration::from_nanos(((t.as_nanos() / p.as_nanos()) * p.as_nanos()) as u64);
                let tau = t - base;
                let next = self.times.iter().copied().find(|&x| x > tau).unwrap_or(p);
                Some(base + next)
            }
        }
    }
}

/// The link of one ordered pair over time.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkSchedule {
    from: usize,
    to: usize,
    base: LinkSpec,
    trace: Option<Trace>,
    /// Scripted changes of this link, by time.
    changes: Vec<LinkChange>,
}

impl LinkSchedule {
    /// A link that never changes.
    pub fn fixed(from: usize, to: usize, base: LinkSpec) -> Self {
        Self {
            from,
            to,
            base,
            trace: None,
            changes: Vec::new(),
        }
    }

    /// The link in effect at `t`.
    pub fn spec_at(&self, t: Duration) -> LinkSpec {
        let mut spec = self.base;
        if let Some(r) = self
            .trace
            .as_ref()
            .and_then(|tr| tr.rate(self.from, self.to, t))
        {
            spec.rate_bps = r;
        }
        for c in self.changes.iter().take_while(|c| c.at <= t) {
            if let Some(r) = c.rate_bps {
                spec.rate_bps = r;
            }
            if let Some(d) = c.delay {
                spec.delay = d;
            }
        }
        spec
    }

    /// The first time after `t` at which the rate may change.
    fn next_change(&self, t: Duration) -> Option<Duration> {
        let scripted = self.changes.iter().map(|c| c.at).find(|&x| x > t);
        let traced = self
            .trace
            .as_ref()
            .filter(|tr| tr.covers(self.from, self.to))
            .and_then(|tr| tr.next_change(t));
        match (scripted, traced) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When a transmission of `wire_bytes` that starts at `start` finishes (module doc).
    pub fn finish(&self, start: Duration, wire_bytes: u64) -> Duration {
        // Bits still to move, in units of 1e-9 bit, so rate (bit/s) × ns adds up exactly.
        let mut left = wire_bytes as u128 * 8 * 1_000_000_000;
        let mut t = start;
        loop {
            let rate = self.spec_at(t).rate_bps.max(1) as u128;
            match self.next_change(t) {
                Some(next) => {
                    let span = (next - t).as_nanos();
                    if rate * span >= left {
                        return t + ns(left.div_ceil(rate));
                    }
                    left -= rate * span;
                    t = next;
                }
                None => return t + ns(left.div_ceil(rate)),
            }
        }
    }
}

fn ns(n: u128) -> Duration {
    Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
}

/// Every ordered pair's [`LinkSchedule`].
#[derive(Clone, Debug, PartialEq)]
pub struct NetSchedule {
    world: usize,
    links: Vec<Option<LinkSchedule>>,
}

impl NetSchedule {
    /// The static matrix with a trace and scripted changes on top.
    pub fn new(matrix: &LinkMatrix, trace: Option<&Trace>, changes: &[LinkChange]) -> Self {
        let world = matrix.world();
        let mut links = Vec::with_capacity(world * world);
        for i in 0..world {
            for j in 0..world {
                links.push(matrix.get(i, j).map(|base| {
                    LinkSchedule {
                        from: i,
                        to: j,
                        base,
                        trace: trace.filter(|t| t.covers(i, j)).cloned(),
                        changes: changes
                            .iter()
                            .filter(|c| c.from == i && c.to == j)
                            .copied()
                            .collect(),
                    }
                }));
            }
        }
        Self { world, links }
    }

    /// Without changes: the matrix as it is.
    pub fn fixed(matrix: &LinkMatrix) -> Self {
        Self::new(matrix, None, &[])
    }

    pub fn world(&self) -> usize {
        self.world
    }

    pub fn get(&self, from: usize, to: usize) -> Option<&LinkSchedule> {
        self.links
            .get(from * self.world + to)
            .and_then(Option::as_ref)
    }

    /// Whether any link changes over time.
    pub fn varies(&self) -> bool {
        self.links
            .iter()
            .flatten()
            .any(|l| l.trace.is_some() || !l.changes.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn trace(text: &str, mode: TraceMode, period: Option<&str>) -> Result<Trace, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.csv");
        std::fs::write(&file, text).unwrap();
        Trace::load(
            &TraceConfig {
                file,
                mode,
                period: period.map(String::from),
            },
            3,
        )
    }

    #[test]
    fn a_constant_link_finishes_as_serialisation_time_says() {
        let spec = LinkSpec::new(3_000, ms(5), ms(0)).unwrap();
        let s = LinkSchedule::fixed(0, 1, spec);
        for bytes in [0u64, 1, 7, 1_000_003] {
            assert_eq!(
                s.finish(ms(2), bytes),
                ms(2) + spec.serialisation_time(bytes)
            );
        }
    }

    #[test]
    fn transmission_integrates_the_rate_across_changes() {
        // 8 Mbit/s until 1 s, then 1 Mbit/s: 2 MB (16 Mbit) started at 0 moves 8 Mbit in the
        // first second and the other 8 Mbit in 8 s at the lower rate: finish at 9 s.
        let t = trace("time_s,0->1\n0,8mbit\n1,1mbit\n", TraceMode::Hold, None).unwrap();
        let base = LinkSpec::new(100_000_000, ms(10), ms(0)).unwrap();
        let m = crate::net::Topology::uniform(base).resolve(3).unwrap();
        let net = NetSchedule::new(&m, Some(&t), &[]);
        let l = net.get(0, 1).unwrap();
        assert_eq!(l.finish(Duration::ZERO, 2_000_000), Duration::from_secs(9));
        // Other links are not in the trace: the static rate.
        assert_eq!(net.get(1, 0).unwrap().spec_at(Duration::from_secs(5)), base);
        // A scripted change wins over the trace from its time on.
        let change = LinkChange {
            at: Duration::from_secs(2),
            from: 0,
            to: 1,
            rate_bps: Some(4_000_000),
            delay: Some(ms(50)),
        };
        let net = NetSchedule::new(&m, Some(&t), &[change]);
        let l = net.get(0, 1).unwrap();
        // 8 Mbit by 1 s, 1 Mbit by 2 s, the last 7 Mbit at 4 Mbit/s: 1.75 s more.
        assert_eq!(l.finish(Duration::ZERO, 2_000_000), ms(3_750));
        assert_eq!(l.spec_at(ms(3_750)).delay, ms(50));
        assert!(net.varies());
    }

    #[test]
    fn a_looped_trace_repeats_with_its_period() {
        let t = trace("time_s,*\n0,10mbit\n2,1mbit\n", TraceMode::Loop, Some("3s")).unwrap();
        assert_eq!(t.rate(0, 2, ms(500)), Some(10_000_000));
        assert_eq!(t.rate(0, 2, ms(2_500)), Some(1_000_000));
        assert_eq!(t.rate(0, 2, ms(3_100)), Some(10_000_000));
        assert_eq!(t.next_change(ms(2_500)), Some(ms(3_000)));
        assert_eq!(t.next_change(ms(3_000)), Some(ms(5_000)));
    }

    #[test]
    fn bad_traces_are_refused_in_one_line() {
        let missing = Trace::load(
            &TraceConfig {
                file: "/nonexistent/trace.csv".into(),
                mode: TraceMode::Hold,
                period: None,
            },
            3,
        )
        .unwrap_err();
        assert!(missing.contains("/nonexistent/trace.csv"), "{missing}");
        for (text, mode, period, needle) in [
            (
                "time_s,0->1\n0,1mbit\n0,2mbit\n",
                TraceMode::Hold,
                None,
                "times must increase",
            ),
            (
                "time_s,0->1\n0,1mbit\n-1,2mbit\n",
                TraceMode::Hold,
                None,
                "negative",
            ),
            ("time_s,0->1\n0,-5mbit\n", TraceMode::Hold, None, "line 2"),
            ("time_s,0->7\n0,1mbit\n", TraceMode::Hold, None, "`0->7`"),
            ("time,0->1\n0,1mbit\n", TraceMode::Hold, None, "time_s"),
            ("time_s,0->1\n1,1mbit\n", TraceMode::Hold, None, "time_s 0"),
            (
                "time_s,0->1\n0,1mbit\n5,2mbit\n",
                TraceMode::Loop,
                Some("4s"),
                "longer",
            ),
            ("time_s,0->1\n0,1mbit\n", TraceMode::Loop, None, "period"),
        ] {
            let e = trace(text, mode, period).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }
}
