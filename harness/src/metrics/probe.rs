//! `probe_topk.bin`: the probe set's top-k expert ids per round, layer and router, dumped
//! so every routing metric can be recomputed offline, and [`routing_rows`], which turns a
//! dump into the rows of routing.csv.
//!
//! # File format (version 1, all integers little-endian)
//! ```text
//! magic       8 bytes  "FMPROBE1"
//! header_len  u32
//! header      header_len bytes of UTF-8 JSON: {"n_layers", "n_experts", "top_k", "sites",
//!             "domains": [{"name", "tokens"}, …]}   (ProbeHeader)
//! records until end of file, each:
//!   round     u32      outer round (0 = the initial model, if dumped)
//!   layer     u32      0 ≤ layer < n_layers
//!   site      i32      −1: the global router after the round's sync; s ≥ 0: site s's local
//!                      router before that sync
//!   tokens    u32      T = Σ domains[].tokens (every record covers the whole probe set)
//!   ids       u16 × T·k  row-major [T, k], column 0 the top-1 expert; tokens are the
//!                      probe sequences of domain 0, then domain 1, … (`domains[].tokens` each)
//!   crc32     u32      CRC-32 (IEEE) of the record's preceding bytes (round … ids)
//! ```
//! A record is written with one `write` call, so a crash leaves at most a truncated last
//! record, which [`ProbeDump::read`] drops and reports (`truncated_bytes`); a complete record
//! with a bad checksum is an error. Python: `np.frombuffer(rec, "<u2").reshape(T, k)`.
//!
//! # routing.csv from a dump
//! Per (round r, layer l) with a global record, with g_r the global routing and F the
//! layer's last dumped round: saturation = overlap(g_r, g_F); round-to-round =
//! overlap(g_r, g_prev) (none at the first round); cross-site agreement = mean over the
//! site records s_r of overlap(s_r, g_r) (none without site records); load metrics of g_r.
//! See [`super::routing`] for the formulas.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::routing::{mean_overlap, overlap, LoadMetrics, MetricError};
use crate::telemetry::RoutingRow;

/// File name inside a run directory.
pub const PROBE_DUMP_FILE: &str = "probe_topk.bin";
const MAGIC: &[u8; 8] = b"FMPROBE1";
/// Fixed bytes of a record besides the ids: round, layer, site, tokens, crc.
const RECORD_FIXED_BYTES: usize = 4 * 5;

/// Errors writing or reading a probe dump.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: not a probe dump ({reason})")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: record {index} (round {round}, layer {layer}) has a bad checksum")]
    Checksum {
        path: PathBuf,
        index: usize,
        round: u32,
        layer: u32,
    },
    #[error("invalid probe record: {0}")]
    Record(String),
    #[error("round {round}, layer {layer}: {error}")]
    Metric {
        round: usize,
        layer: usize,
        error: MetricError,
    },
}

/// A probe domain: its name and its number of tokens in every record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeDomain {
    pub name: String,
    pub tokens: usize,
}

/// What every record of a dump shares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeHeader {
    pub n_layers: usize,
    pub n_experts: usize,
    pub top_k: usize,
    pub sites: usize,
    pub domains: Vec<ProbeDomain>,
}

impl ProbeHeader {
    /// T: probe tokens per record.
    pub fn tokens(&self) -> usize {
        self.domains.iter().map(|d| d.tokens).sum()
    }

    fn check(&self) -> Result<(), String> {
        if self.top_k == 0 || self.n_layers == 0 || self.n_experts == 0 {
            return Err("top_k, n_layers and n_experts must be at least 1".into());
        }
        if self.n_experts > u16::MAX as usize + 1 {
            return Err(format!(
                "n_experts = {} does not fit u16 ids (at most 65536)",
                self.n_experts
            ));
        }
        if self.top_k > self.n_experts {
            return Err(format!(
                "top_k = {} exceeds n_experts = {}",
                self.top_k, self.n_experts
            ));
        }
        if self.tokens() == 0 {
            return Err("the probe set has no tokens".into());
        }
        Ok(())
    }
}

/// Whose router a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Router {
    /// The global model after the round's synchronisation.
    Global,
    /// Site s's local model before the round's synchronisation.
    Site(usize),
}

impl Router {
    fn to_i32(self) -> Result<i32, ProbeError> {
        match self {
            Router::Global => Ok(-1),
            Router::Site(s) => {
                i32::try_from(s).map_err(|_| ProbeError::Record(format!("site {s} too large")))
            }
        }
    }
}

/// One record: a router's top-k ids on the whole probe set for one layer at one round.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeRecord {
    pub round: usize,
    pub layer: usize,
    pub router: Router,
    /// Row-major [T, k].
    pub ids: Vec<i64>,
}

/// Appends records to `probe_topk.bin`, one write per record.
pub struct ProbeDumpWriter {
    file: File,
    path: PathBuf,
    header: ProbeHeader,
    records: usize,
}

impl ProbeDumpWriter {
    /// Create (truncate) the file and write magic and header.
    pub fn create(path: impl AsRef<Path>, header: ProbeHeader) -> Result<Self, ProbeError> {
        let path = path.as_ref().to_path_buf();
        header.check().map_err(|reason| ProbeError::Format {
            path: path.clone(),
            reason,
        })?;
        let json = serde_json::to_vec(&header).expect("probe header serialises");
        let mut bytes = Vec::with_capacity(12 + json.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(json.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&json);
        let io = |error| ProbeError::Io {
            path: path.clone(),
            error,
        };
        let mut file = File::create(&path).map_err(io)?;
        file.write_all(&bytes).map_err(io)?;
        Ok(Self {
            file,
            path,
            header,
            records: 0,
        })
    }

    pub fn header(&self) -> &ProbeHeader {
        &self.header
    }

    /// Records written so far.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Append one record; `ids` is row-major [T, k] with T = header tokens, ids < n_experts.
    pub fn write(
        &mut self,
        round: usize,
        layer: usize,
        router: Router,
        ids: &[i64],
    ) -> Result<(), ProbeError> {
        let h = &self.header;
        let expected = h.tokens() * h.top_k;
        if ids.len() != expected {
            return Err(ProbeError::Record(format!(
                "{} ids, expected tokens·k = {}·{} = {expected}",
                ids.len(),
                h.tokens(),
                h.top_k
            )));
        }
        if layer >= h.n_layers {
            return Err(ProbeError::Record(format!(
                "layer {layer} out of range 0..{}",
                h.n_layers
            )));
        }
        if let Router::Site(s) = router {
            if s >= h.sites {
                return Err(ProbeError::Record(format!(
                    "site {s} out of range 0..{}",
                    h.sites
                )));
            }
        }
        let round = u32::try_from(round)
            .map_err(|_| ProbeError::Record(format!("round {round} too large")))?;
        let mut rec = Vec::with_capacity(RECORD_FIXED_BYTES + 2 * ids.len());
        rec.extend_from_slice(&round.to_le_bytes());
        rec.extend_from_slice(&(layer as u32).to_le_bytes());
        rec.extend_from_slice(&router.to_i32()?.to_le_bytes());
        rec.extend_from_slice(&(h.tokens() as u32).to_le_bytes());
        for &id in ids {
            if id < 0 || id as u64 >= h.n_experts as u64 {
                return Err(ProbeError::Record(format!(
                    "expert id {id} out of range 0..{}",
                    h.n_experts
                )));
            }
            rec.extend_from_slice(&(id as u16).to_le_bytes());
        }
        let crc = crc32fast::hash(&rec);
        rec.extend_from_slice(&crc.to_le_bytes());
        self.file.write_all(&rec).map_err(|error| ProbeError::Io {
            path: self.path.clone(),
            error,
        })?;
        self.records += 1;
        Ok(())
    }

    /// Flush to stable storage.
    pub fn sync(&mut self) -> Result<(), ProbeError> {
        self.file.sync_all().map_err(|error| ProbeError::Io {
            path: self.path.clone(),
            error,
        })
    }
}

/// A dump read back.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeDump {
    pub header: ProbeHeader,
    pub records: Vec<ProbeRecord>,
    /// Bytes of a truncated last record that were dropped (a crash mid-write); 0 normally.
    pub truncated_bytes: usize,
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl ProbeDump {
    pub fn read(path: impl AsRef<Path>) -> Result<Self, ProbeError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|error| ProbeError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Self::parse(&bytes).map_err(|e| match e {
            ParseError::Format(reason) => ProbeError::Format {
                path: path.to_path_buf(),
                reason,
            },
            ParseError::Checksum {
                index,
                round,
                layer,
            } => ProbeError::Checksum {
                path: path.to_path_buf(),
                index,
                round,
                layer,
            },
        })
    }

    fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        let fmt = |s: &str| ParseError::Format(s.to_string());
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return Err(fmt("missing magic FMPROBE1"));
        }
        let header_len = read_u32(bytes, 8) as usize;
        let header_end = 12usize
            .checked_add(header_len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| fmt("header runs past the end"))?;
        let header: ProbeHeader = serde_json::from_slice(&bytes[12..header_end])
            .map_err(|e| ParseError::Format(format!("header: {e}")))?;
        header.check().map_err(ParseError::Format)?;
        let k = header.top_k;
        let mut records = Vec::new();
        let mut at = header_end;
        let mut truncated_bytes = 0;
        while at < bytes.len() {
            let rest = bytes.len() - at;
            if rest < 16 {
                truncated_bytes = rest;
                break;
            }
            let tokens = read_u32(bytes, at + 12) as usize;
            let len = RECORD_FIXED_BYTES + 2 * tokens * k;
            if rest < len {
                truncated_bytes = rest;
                break;
            }
            let rec = &bytes[at..at + len];
            let (round, layer) = (read_u32(rec, 0), read_u32(rec, 4));
            if crc32fast::hash(&rec[..len - 4]) != read_u32(rec, len - 4) {
                return Err(ParseError::Checksum {
                    index: records.len(),
                    round,
                    layer,
                });
            }
            let site = read_u32(rec, 8) as i32;
            let router = match site {
                -1 => Router::Global,
                s if s >= 0 => Router::Site(s as usize),
                s => {
                    return Err(ParseError::Format(format!(
                        "record {}: site {s}",
                        records.len()
                    )))
                }
            };
            if tokens != header.tokens() || layer as usize >= header.n_layers {
                return Err(ParseError::Format(format!(
                    "record {}: {tokens} tokens at layer {layer}, header says {} tokens, {} layers",
                    records.len(),
                    header.tokens(),
                    header.n_layers
                )));
            }
            let ids = rec[16..len - 4]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
                .collect();
            records.push(ProbeRecord {
                round: round as usize,
                layer: layer as usize,
                router,
                ids,
            });
            at += len;
        }
        Ok(ProbeDump {
            header,
            records,
            truncated_bytes,
        })
    }

    /// The ids of one record, if dumped.
    pub fn ids(&self, round: usize, layer: usize, router: Router) -> Option<&[i64]> {
        self.records
            .iter()
            .find(|r| r.round == round && r.layer == layer && r.router == router)
            .map(|r| r.ids.as_slice())
    }
}

enum ParseError {
    Format(String),
    Checksum {
        index: usize,
        round: u32,
        layer: u32,
    },
}

/// The rows of routing.csv from a dump, ordered by (round, layer): one row per global
/// record. `skip_rate(round, layer)` supplies the training skip rate of the round (0 for
/// methods where every site holds every expert). Duplicate records are an error.
pub fn routing_rows(
    dump: &ProbeDump,
    skip_rate: impl Fn(usize, usize) -> f64,
) -> Result<Vec<RoutingRow>, ProbeError> {
    let h = &dump.header;
    let k = h.top_k;
    // (layer, round) → global ids; (layer, round) → site ids.
    let mut global: BTreeMap<(usize, usize), &[i64]> = BTreeMap::new();
    let mut sites: BTreeMap<(usize, usize), BTreeMap<usize, &[i64]>> = BTreeMap::new();
    for r in &dump.records {
        let dup = match r.router {
            Router::Global => global.insert((r.layer, r.round), &r.ids).is_some(),
            Router::Site(s) => sites
                .entry((r.layer, r.round))
                .or_default()
                .insert(s, &r.ids)
                .is_some(),
        };
        if dup {
            return Err(ProbeError::Record(format!(
                "duplicate record: round {}, layer {}, {:?}",
                r.round, r.layer, r.router
            )));
        }
    }
    let mut rows = Vec::with_capacity(global.len());
    for layer in 0..h.n_layers {
        let rounds: Vec<(usize, &[i64])> = global
            .range((layer, 0)..=(layer, usize::MAX))
            .map(|(&(_, round), &ids)| (round, ids))
            .collect();
        let Some(&(_, final_ids)) = rounds.last() else {
            continue;
        };
        for (i, &(round, ids)) in rounds.iter().enumerate() {
            let metric = |error| ProbeError::Metric {
                round,
                layer,
                error,
            };
            let sat = overlap(ids, final_ids, k).map_err(metric)?;
            let prev = if i > 0 {
                Some(overlap(ids, rounds[i - 1].1, k).map_err(metric)?)
            } else {
                None
            };
            let agreement = match sites.get(&(layer, round)) {
                Some(per_site) if !per_site.is_empty() => {
                    let list: Vec<&[i64]> = per_site.values().copied().collect();
                    Some(mean_overlap(&list, ids, k).map_err(metric)?)
                }
                _ => None,
            };
            let load = LoadMetrics::from_topk(ids, k, h.n_experts).map_err(metric)?;
            rows.push(RoutingRow {
                round,
                layer,
                saturation_topk: Some(sat.topk),
                saturation_top1: Some(sat.top1),
                overlap_prev_topk: prev.map(|o| o.topk),
                overlap_prev_top1: prev.map(|o| o.top1),
                cross_site_agreement_topk: agreement.map(|o| o.topk),
                cross_site_agreement_top1: agreement.map(|o| o.top1),
                cv: load.cv,
                max_vio: load.max_vio,
                norm_entropy: load.norm_entropy,
                dead_experts: load.dead_experts,
                kl_uniform: load.kl_uniform,
                skip_rate: skip_rate(round, layer),
            });
        }
    }
    rows.sort_by_key(|r| (r.round, r.layer));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> ProbeHeader {
        ProbeHeader {
            n_layers: 2,
            n_experts: 4,
            top_k: 2,
            sites: 2,
            domains: vec![
                ProbeDomain {
                    name: "a".into(),
                    tokens: 2,
                },
                ProbeDomain {
                    name: "b".into(),
                    tokens: 1,
                },
            ],
        }
    }

    #[test]
    fn round_trip_and_truncated_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PROBE_DUMP_FILE);
        let mut w = ProbeDumpWriter::create(&path, header()).unwrap();
        w.write(1, 0, Router::Global, &[0, 1, 2, 3, 3, 0]).unwrap();
        w.write(1, 0, Router::Site(1), &[1, 0, 2, 3, 3, 1]).unwrap();
        w.write(2, 1, Router::Global, &[3, 2, 1, 0, 0, 1]).unwrap();
        assert!(
            w.write(2, 2, Router::Global, &[0; 6]).is_err(),
            "layer out of range"
        );
        assert!(
            w.write(2, 1, Router::Global, &[0; 4]).is_err(),
            "wrong length"
        );
        assert!(
            w.write(2, 1, Router::Global, &[0, 0, 0, 0, 0, 4]).is_err(),
            "id out of range"
        );
        assert!(
            w.write(2, 1, Router::Site(2), &[0; 6]).is_err(),
            "site out of range"
        );
        drop(w);
        let d = ProbeDump::read(&path).unwrap();
        assert_eq!(d.header, header());
        assert_eq!(d.records.len(), 3);
        assert_eq!(d.truncated_bytes, 0);
        assert_eq!(d.ids(1, 0, Router::Site(1)), Some(&[1, 0, 2, 3, 3, 1][..]));
        // Exact size: 12 + header + 3 records of 20 + 2·6 bytes.
        let header_len = serde_json::to_vec(&header()).unwrap().len();
        let size = std::fs::metadata(&path).unwrap().len() as usize;
        assert_eq!(size, 12 + header_len + 3 * 32);

        // A crash mid-record: the partial tail is dropped and reported.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(size - 5);
        std::fs::write(&path, &bytes).unwrap();
        let d = ProbeDump::read(&path).unwrap();
        assert_eq!((d.records.len(), d.truncated_bytes), (2, 27));

        // A flipped bit in a complete record is an error.
        bytes[12 + header_len + 17] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            ProbeDump::read(&path),
            Err(ProbeError::Checksum {
                index: 0,
                round: 1,
                layer: 0,
                ..
            })
        ));
    }

    #[test]
    fn rows_from_a_constructed_dump() {
        let h = ProbeHeader {
            n_layers: 1,
            n_experts: 4,
            top_k: 2,
            sites: 2,
            domains: vec![ProbeDomain {
                name: "a".into(),
                tokens: 2,
            }],
        };
        let rec = |round, router, ids: &[i64]| ProbeRecord {
            round,
            layer: 0,
            router,
            ids: ids.to_vec(),
        };
        let dump = ProbeDump {
            header: h,
            records: vec![
                rec(1, Router::Global, &[0, 1, 2, 3]),
                rec(1, Router::Site(0), &[0, 1, 2, 3]),
                rec(1, Router::Site(1), &[2, 3, 0, 1]),
                rec(2, Router::Global, &[0, 2, 2, 3]),
                rec(3, Router::Global, &[0, 2, 2, 3]),
            ],
            truncated_bytes: 0,
        };
        let rows = routing_rows(&dump, |r, _| r as f64 / 10.0).unwrap();
        assert_eq!(rows.len(), 3);
        // Round 1 vs final (round 3): t0 {0,1}∩{0,2} = 1/2, t1 {2,3} = 1 → 3/4; top-1 both same.
        assert_eq!(
            (rows[0].saturation_topk, rows[0].saturation_top1),
            (Some(0.75), Some(1.0))
        );
        assert_eq!(rows[0].overlap_prev_topk, None);
        // Sites: site 0 identical (1, 1), site 1 disjoint (0, 0) → mean 0.5, 0.5.
        assert_eq!(rows[0].cross_site_agreement_topk, Some(0.5));
        assert_eq!(rows[0].cross_site_agreement_top1, Some(0.5));
        assert_eq!(rows[1].overlap_prev_topk, Some(0.75));
        assert_eq!(rows[1].cross_site_agreement_topk, None);
        assert_eq!(
            (rows[2].saturation_topk, rows[2].overlap_prev_topk),
            (Some(1.0), Some(1.0))
        );
        // Round 2 counts [1, 0, 2, 1]: one dead expert; skip rate from the callback.
        assert_eq!(rows[1].dead_experts, 1);
        assert_eq!(rows[1].skip_rate, 0.2);
        // Round 1 counts [1, 1, 1, 1]: balanced.
        assert_eq!(
            (rows[0].cv, rows[0].max_vio, rows[0].norm_entropy),
            (0.0, 0.0, 1.0)
        );

        let mut dup = dump.clone();
        dup.records.push(rec(2, Router::Global, &[0, 1, 2, 3]));
        assert!(routing_rows(&dup, |_, _| 0.0).is_err());
    }
}
