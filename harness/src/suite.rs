//! Suite files: a base config, a grid over any knob, and seeds, expanded into runs.
//!
//! ```toml
//! seeds = [0, 1]                       # top level, before any table; default: [base.seed]
//!
//! [suite]                              # optional
//! name = "paper"                       # default: the file stem; [A-Za-z0-9._-]
//! description = "…"
//!
//! [base]                               # a RunConfig: every knob of config.rs, defaults for the rest
//! preset = "small"
//! sites = 4
//! [base.fomoe]
//! rho = 2
//!
//! [grid]                               # dotted knob path = list of values
//! method = ["ddp", "diloco", "photon", "fomoe"]
//! inner_steps = [16, 32]
//! fomoe.rho = [1, 2, 4]                # same as "fomoe.rho" = [...] or [grid.fomoe] rho = [...]
//! network.rate = ["10mbit", "100mbit"]
//! data.heterogeneity = [{ kind = "iid" }, { kind = "dirichlet", alpha = 0.5 }]
//!
//! [[exclude]]                          # drop grid points matching every key (a list = any of)
//! sites = 4
//! fomoe.rho = [8]
//!
//! [[include]]                          # an extra grid over the same base (scalars allowed)
//! method = "fomoe"
//! fomoe.skip_policy = ["renormalize", "reroute"]
//! ```
//!
//! **Expansion.** The main grid is the cross product of its keys, taken in a fixed key
//! order (method, preset, model shape, sites, steps, ρ, H, FoMoE knobs, outer optimiser,
//! wire dtype, network, data, then the rest alphabetically) with the first key outermost
//! and values in file order, minus excluded points; then each `[[include]]` grid in file
//! order; each point once per seed (seed innermost). Deterministic and independent of the
//! order of keys in the file.
//!
//! **Knobs that do not apply.** A grid value of a knob that a point's method ignores
//! ([`knob_applies`]: `fomoe.*` outside FoMoE, `inner_steps`/`outer`/`keep_inner_state`
//! for DDP and single, `photon_topology` outside Photon, network and wire dtype for single)
//! is not applied: the run keeps the base value, and points that become the same config
//! collapse into one run (the first). So `method × fomoe.rho` with 4 methods and 3 values
//! of ρ is 3 + 3 = 6 runs, not 12.
//!
//! **Run ids** spell coordinates: the method, then each *varied* knob (a grid key taking
//! more than one value among the runs it applies to) that applies to the run, in the key
//! order above, with short names (`rho2`, `h32`, `bw100m`, `d20ms`, `m4`, `skip_reroute`,
//! `bf16`, …; other knobs `<last path segment><value>`), then `s<seed>`:
//! `fomoe-rho2-h32-bw100m-s0`. A knob varied only by `[[include]]` grids (an ablation axis)
//! is spelled only where it differs from the base, so the main grid's ids stay short:
//! `fomoe-rho2-h32-s0` beside `fomoe-rho2-h32-skip_reroute-s0`. Ids are unique within a
//! suite (checked).
//!
//! **Validation** happens before anything runs: unknown keys at any level (top level, base,
//! grid keys that name no field, include/exclude keys) are errors, every grid value is
//! type-checked on its own, and every expanded config is [`RunConfig::validate`]d. Errors are
//! one line naming the suite file, then the grid key and value or the run id, the field,
//! the value and what is allowed ([`SuiteError`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::{Table, Value};

use crate::config::{knob_applies, Method, RunConfig};
use crate::model::ConfigError;

/// A suite file that cannot be used, on one line.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error("{file}: {error}")]
    Io { file: String, error: std::io::Error },
    #[error("{file}: line {line}, column {column}: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// The shape of the file: unknown top-level keys, grid/include/exclude/seeds/suite misuse.
    #[error("{file}: {key}: {message}")]
    Structure {
        file: String,
        key: String,
        message: String,
    },
    #[error("{file}: base.{field}: {message}")]
    Base {
        file: String,
        field: String,
        message: String,
    },
    #[error("{file}: grid key {key} = {value}: {field}: {message}")]
    GridValue {
        file: String,
        key: String,
        value: String,
        field: String,
        message: String,
    },
    #[error("{file}: run {run_id}: {error}")]
    Invalid {
        file: String,
        run_id: String,
        error: ConfigError,
    },
    #[error("{file}: run id {id} names two different configs (hashes {first} and {second}): give the knob values distinct short forms")]
    DuplicateId {
        file: String,
        id: String,
        first: String,
        second: String,
    },
    #[error("{file}: exclude #{index} ({what}) matches no grid point")]
    UselessExclude {
        file: String,
        index: usize,
        what: String,
    },
    #[error("{file}: the suite expands to no runs")]
    Empty { file: String },
    #[error("{file}: the suite sets no knobs (no [base], [grid] or [[include]]); write the runs you mean, e.g. [base] method = \"diloco\"")]
    NoKnobs { file: String },
    #[error("{file}: {what} expands to {points} grid points × {seeds} seeds, more than the limit of {MAX_RUNS} runs")]
    TooManyRuns {
        file: String,
        what: String,
        points: String,
        seeds: usize,
    },
}

/// Most runs one suite may expand to (grid points × seeds, before collapsing): a bound on
/// the work and memory of expansion, far above any suite of this project (paper: ~100).
pub const MAX_RUNS: usize = 10_000;

/// One expanded run.
#[derive(Clone, Debug, PartialEq)]
pub struct SuiteRun {
    pub id: String,
    pub config: RunConfig,
    /// [`RunConfig::run_hash`] of `config`.
    pub hash: String,
}

/// A parsed, validated suite.
#[derive(Clone, Debug)]
pub struct Suite {
    pub name: String,
    pub description: Option<String>,
    pub file: PathBuf,
    /// The file's text, as read (copied into the results directory).
    pub source: String,
    pub seeds: Vec<u64>,
    /// Grid keys that vary, in id order (these are spelled in run ids).
    pub varied: Vec<String>,
    pub runs: Vec<SuiteRun>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSuite {
    #[serde(default)]
    suite: RawMeta,
    seeds: Option<Vec<u64>>,
    #[serde(default)]
    base: Table,
    #[serde(default)]
    grid: Table,
    #[serde(default)]
    include: Vec<Table>,
    #[serde(default)]
    exclude: Vec<Table>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMeta {
    name: Option<String>,
    description: Option<String>,
}

/// Knob paths in id / expansion order, with the prefix of their id token ("" = the value alone).
const KEY_ORDER: &[(&str, &str)] = &[
    ("method", ""),
    ("preset", ""),
    ("model.n_experts", "e"),
    ("model.top_k", "k"),
    ("model.router", ""),
    ("sites", "m"),
    ("steps", "steps"),
    ("fomoe.rho", "rho"),
    ("inner_steps", "h"),
    ("fomoe.skip_policy", "skip_"),
    ("fomoe.aux_scope", "aux_"),
    ("fomoe.placement", "place_"),
    ("outer", "outer_"),
    ("keep_inner_state", "keep_"),
    ("photon_topology", ""),
    ("wire_dtype", ""),
    ("network.backend", ""),
    ("network.scenario", ""),
    ("network.rate", "bw"),
    ("network.delay", "d"),
    ("network.jitter", "j"),
    ("data.kind", ""),
    ("data.path", ""),
    ("data.heterogeneity", "het_"),
    ("optim.lr", "lr"),
];

fn key_rank(path: &str) -> usize {
    KEY_ORDER
        .iter()
        .position(|(k, _)| *k == path)
        .unwrap_or(KEY_ORDER.len())
}

fn sort_keys<T>(entries: &mut [(String, T)]) {
    entries.sort_by(|a, b| (key_rank(&a.0), &a.0).cmp(&(key_rank(&b.0), &b.0)));
}

/// Keep filesystem- and shell-friendly characters.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn render_value(key: &str, v: &Value) -> String {
    match (key, v) {
        ("network.rate", Value::String(s)) => match crate::units::parse_rate_bps(s) {
            Ok(bps) => {
                let r = crate::units::format_rate(bps);
                r.strip_suffix("bit").unwrap_or(&r).to_string()
            }
            Err(_) => sanitize(s),
        },
        ("network.delay" | "network.jitter", Value::String(s)) => {
            match crate::units::parse_duration(s) {
                Ok(d) => crate::units::format_duration(d),
                Err(_) => sanitize(s),
            }
        }
        // A corpus path is spelled by its last component (`data/text-torch` → `text-torch`).
        ("data.path", Value::String(s)) => sanitize(
            std::path::Path::new(s)
                .file_name()
                .map_or(s.as_str(), |n| n.to_str().unwrap_or(s)),
        ),
        (_, Value::String(s)) => sanitize(s),
        (_, Value::Integer(i)) => i.to_string(),
        (_, Value::Float(f)) => f.to_string(),
        (_, Value::Boolean(b)) => b.to_string(),
        (_, Value::Datetime(d)) => sanitize(&d.to_string()),
        (_, Value::Array(a)) => a
            .iter()
            .map(|x| render_value("", x))
            .collect::<Vec<_>>()
            .join("_"),
        (_, Value::Table(t)) => {
            let mut parts = Vec::new();
            if let Some(kind) = t.get("kind") {
                parts.push(render_value("", kind));
            }
            for (k, x) in t.iter().filter(|(k, _)| *k != "kind") {
                parts.push(format!("{}{}", sanitize(k), render_value("", x)));
            }
            parts.join("_")
        }
    }
}

/// The id token of knob `key` with value `v`.
fn token(key: &str, v: &Value) -> String {
    let value = render_value(key, v);
    match KEY_ORDER.iter().find(|(k, _)| *k == key) {
        Some((_, prefix)) => format!("{prefix}{value}"),
        None => {
            let last = key.rsplit('.').next().unwrap_or(key);
            let sep = if matches!(v, Value::Integer(_) | Value::Float(_)) {
                ""
            } else {
                "_"
            };
            format!("{}{sep}{value}", sanitize(last))
        }
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// Set `path` (dotted) in `table` to `value`, creating intermediate tables.
fn set_path(table: &mut Table, path: &str, value: Value) -> Result<(), String> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut cur = table;
    for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
        let entry = cur
            .entry(part.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        cur = match entry {
            Value::Table(t) => t,
            _ => return Err(format!("`{}` is not a table", parts[..=i].join("."))),
        };
    }
    cur.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

fn get_path<'a>(table: &'a Table, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut cur = table.get(parts.next()?)?;
    for part in parts {
        cur = cur.as_table()?.get(part)?;
    }
    Some(cur)
}

/// Deserialise a config table; on error, (dotted field path, message).
fn de_config(t: &Table) -> Result<RunConfig, (String, String)> {
    serde_path_to_error::deserialize(Value::Table(t.clone())).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." {
            "(top level)".to_string()
        } else {
            path
        };
        (path, e.inner().message().to_string())
    })
}

/// A flattened grid-like table: (dotted path, values).
type Entries = Vec<(String, Vec<Value>)>;

struct Ctx {
    file: String,
}

impl Ctx {
    fn structure(&self, key: impl Into<String>, message: impl Into<String>) -> SuiteError {
        SuiteError::Structure {
            file: self.file.clone(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// Flatten nested tables down to leaves; a leaf must be a list unless `scalars_ok`.
    fn flatten(
        &self,
        section: &str,
        t: &Table,
        prefix: &str,
        scalars_ok: bool,
        out: &mut Entries,
    ) -> Result<(), SuiteError> {
        for (k, v) in t {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            let values = match v {
                Value::Table(inner) => {
                    self.flatten(section, inner, &path, scalars_ok, out)?;
                    continue;
                }
                Value::Array(a) if a.is_empty() => {
                    return Err(self.structure(
                        format!("{section}.{path}"),
                        "empty list: give at least one value",
                    ))
                }
                Value::Array(a) => a.clone(),
                other if scalars_ok => vec![other.clone()],
                other => {
                    return Err(self.structure(
                        format!("{section}.{path}"),
                        format!(
                            "must be a list of values, e.g. {path} = [{}]",
                            value_text(other)
                        ),
                    ))
                }
            };
            if path == "seed" {
                return Err(self.structure(
                    format!("{section}.seed"),
                    "set the seeds with the top-level `seeds = [...]`",
                ));
            }
            if out.iter().any(|(p, _)| *p == path) {
                return Err(self.structure(format!("{section}.{path}"), "given twice"));
            }
            out.push((path, values));
        }
        Ok(())
    }

    /// Grid points of `entries` (their cross product) added to `before`; an error when the
    /// total times `seeds` passes [`MAX_RUNS`]. Checked before anything is expanded.
    fn check_size(
        &self,
        what: &str,
        entries: &Entries,
        seeds: usize,
        before: usize,
    ) -> Result<usize, SuiteError> {
        let points = entries
            .iter()
            .try_fold(1usize, |n, (_, v)| n.checked_mul(v.len()))
            .and_then(|n| n.checked_add(before));
        match (points, points.and_then(|p| p.checked_mul(seeds))) {
            (Some(p), Some(runs)) if runs <= MAX_RUNS => Ok(p),
            _ => Err(SuiteError::TooManyRuns {
                file: self.file.clone(),
                what: what.to_string(),
                points: points.map_or_else(|| "more than 2^64".into(), |p| p.to_string()),
                seeds,
            }),
        }
    }

    /// Each value of each key must apply cleanly to the base on its own.
    fn check_values(&self, base: &Table, entries: &Entries) -> Result<(), SuiteError> {
        for (key, values) in entries {
            for v in values {
                let mut t = base.clone();
                let bad = |field: String, message: String| SuiteError::GridValue {
                    file: self.file.clone(),
                    key: key.clone(),
                    value: value_text(v),
                    field,
                    message,
                };
                set_path(&mut t, key, v.clone()).map_err(|m| bad(key.clone(), m))?;
                de_config(&t).map_err(|(field, message)| bad(field, message))?;
            }
        }
        Ok(())
    }
}

/// Cross product, first key outermost.
fn product(entries: &Entries) -> Vec<Vec<(String, Value)>> {
    let mut points: Vec<Vec<(String, Value)>> = vec![Vec::new()];
    for (key, values) in entries {
        points = points
            .into_iter()
            .flat_map(|p| {
                values.iter().map(move |v| {
                    let mut q = p.clone();
                    q.push((key.clone(), v.clone()));
                    q
                })
            })
            .collect();
    }
    points
}

fn method_of(point: &[(String, Value)], base: Method) -> Method {
    point
        .iter()
        .find(|(k, _)| k == "method")
        .and_then(|(_, v)| Method::deserialize(v.clone()).ok())
        .unwrap_or(base)
}

fn describe_point(point: &[(String, Value)], seed: u64) -> String {
    let mut parts: Vec<String> = point
        .iter()
        .map(|(k, v)| format!("{k}={}", value_text(v)))
        .collect();
    parts.push(format!("seed={seed}"));
    format!("grid point ({})", parts.join(", "))
}

impl Suite {
    /// Read and validate a suite file.
    pub fn load(path: &Path) -> Result<Suite, SuiteError> {
        let text = std::fs::read_to_string(path).map_err(|error| SuiteError::Io {
            file: path.display().to_string(),
            error,
        })?;
        Self::parse(&text, path)
    }

    /// Parse and validate suite text; `file` names it in errors and gives the default name.
    pub fn parse(text: &str, file: &Path) -> Result<Suite, SuiteError> {
        let cx = Ctx {
            file: file.display().to_string(),
        };
        let table: Table = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |s| line_column(text, s.start));
            SuiteError::Syntax {
                file: cx.file.clone(),
                line,
                column,
                message: e.message().to_string(),
            }
        })?;
        let raw: RawSuite = serde_path_to_error::deserialize(Value::Table(table))
            .map_err(|e| cx.structure(e.path().to_string(), e.inner().message()))?;

        let name = match raw.suite.name {
            Some(n) => n,
            None => file
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("suite")
                .to_string(),
        };
        if name.is_empty() || name.starts_with('.') || sanitize(&name) != name {
            return Err(cx.structure(
                "suite.name",
                format!("{name:?}: use letters, digits, '.', '-', '_' (not starting with '.')"),
            ));
        }

        if raw.seeds.is_some() && raw.base.contains_key("seed") {
            return Err(cx.structure(
                "base.seed",
                "set the seeds with the top-level `seeds = [...]` instead",
            ));
        }
        let base_cfg = de_config(&raw.base).map_err(|(field, message)| SuiteError::Base {
            file: cx.file.clone(),
            field,
            message,
        })?;
        // Grid values apply on top of the fully resolved base, so that e.g.
        // `data.heterogeneity` can vary without restating `[base.data] kind`.
        let base = match Value::try_from(&base_cfg) {
            Ok(Value::Table(t)) => t,
            Ok(_) => unreachable!("a struct serialises to a table"),
            Err(e) => {
                return Err(cx.structure("base", format!("cannot be represented in TOML: {e}")))
            }
        };

        let seeds = raw.seeds.unwrap_or_else(|| vec![base_cfg.seed]);
        if seeds.is_empty() {
            return Err(cx.structure("seeds", "must list at least one seed"));
        }
        for (i, s) in seeds.iter().enumerate() {
            if seeds[..i].contains(s) {
                return Err(cx.structure("seeds", format!("seed {s} listed twice")));
            }
            if *s > i64::MAX as u64 {
                return Err(cx.structure("seeds", format!("seed {s} is larger than {}", i64::MAX)));
            }
        }

        if raw.base.is_empty() && raw.grid.is_empty() && raw.include.is_empty() {
            return Err(SuiteError::NoKnobs {
                file: cx.file.clone(),
            });
        }
        let mut grid = Entries::new();
        cx.flatten("grid", &raw.grid, "", false, &mut grid)?;
        sort_keys(&mut grid);
        let mut total_points = cx.check_size("[grid]", &grid, seeds.len(), 0)?;
        cx.check_values(&base, &grid)?;

        let mut points = product(&grid);
        for (index, ex) in raw.exclude.iter().enumerate() {
            let mut keys = Entries::new();
            cx.flatten(&format!("exclude[{index}]"), ex, "", true, &mut keys)?;
            if keys.is_empty() {
                return Err(cx.structure(
                    format!("exclude[{index}]"),
                    "empty: name at least one grid key",
                ));
            }
            for (k, _) in &keys {
                if !grid.iter().any(|(g, _)| g == k) {
                    let known: Vec<&str> = grid.iter().map(|(g, _)| g.as_str()).collect();
                    return Err(cx.structure(
                        format!("exclude[{index}].{k}"),
                        format!(
                            "not a grid key; grid keys: {}",
                            if known.is_empty() {
                                "none".into()
                            } else {
                                known.join(", ")
                            }
                        ),
                    ));
                }
            }
            let before = points.len();
            points.retain(|p| {
                !keys
                    .iter()
                    .all(|(k, vals)| p.iter().any(|(pk, pv)| pk == k && vals.contains(pv)))
            });
            if points.len() == before {
                let what = keys
                    .iter()
                    .map(|(k, v)| {
                        format!(
                            "{k}={}",
                            v.iter().map(value_text).collect::<Vec<_>>().join("|")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(SuiteError::UselessExclude {
                    file: cx.file.clone(),
                    index,
                    what,
                });
            }
        }
        let mut all_keys: Vec<String> = grid.iter().map(|(k, _)| k.clone()).collect();
        for (index, inc) in raw.include.iter().enumerate() {
            let mut keys = Entries::new();
            cx.flatten(&format!("include[{index}]"), inc, "", true, &mut keys)?;
            if keys.is_empty() {
                return Err(
                    cx.structure(format!("include[{index}]"), "empty: name at least one knob")
                );
            }
            sort_keys(&mut keys);
            total_points = cx.check_size(
                &format!("[[include]] #{index} with the grid before it"),
                &keys,
                seeds.len(),
                total_points,
            )?;
            cx.check_values(&base, &keys)?;
            all_keys.extend(keys.iter().map(|(k, _)| k.clone()));
            points.extend(product(&keys));
        }
        all_keys.sort_by(|a, b| (key_rank(a), a).cmp(&(key_rank(b), b)));
        all_keys.dedup();

        // Build every distinct config (first occurrence wins), remembering its table.
        let mut built: Vec<(RunConfig, String, Table, u64)> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for point in &points {
            let method = method_of(point, base_cfg.method);
            for &seed in &seeds {
                let mut t = base.clone();
                for (k, v) in point.iter().filter(|(k, _)| knob_applies(method, k)) {
                    set_path(&mut t, k, v.clone()).map_err(|message| SuiteError::GridValue {
                        file: cx.file.clone(),
                        key: describe_point(point, seed),
                        value: "(combination)".into(),
                        field: k.clone(),
                        message,
                    })?;
                }
                t.insert("seed".into(), Value::Integer(seed as i64));
                let cfg = de_config(&t).map_err(|(field, message)| SuiteError::GridValue {
                    file: cx.file.clone(),
                    key: describe_point(point, seed),
                    value: "(combination)".into(),
                    field,
                    message,
                })?;
                let hash = cfg.run_hash();
                if seen.contains_key(&hash) {
                    continue;
                }
                seen.insert(hash.clone(), built.len());
                built.push((cfg, hash, t, seed));
            }
        }
        if built.is_empty() {
            return Err(SuiteError::Empty {
                file: cx.file.clone(),
            });
        }

        // Varied keys: more than one distinct value among the runs they apply to.
        let varied: Vec<String> = all_keys
            .into_iter()
            .filter(|k| k != "method")
            .filter(|k| {
                let mut distinct: Vec<Option<&Value>> = Vec::new();
                for (cfg, _, t, _) in &built {
                    if knob_applies(cfg.method, k) {
                        let v = get_path(t, k);
                        if !distinct.contains(&v) {
                            distinct.push(v);
                        }
                    }
                }
                distinct.len() > 1
            })
            .collect();

        let mut ids: BTreeMap<String, String> = BTreeMap::new();
        let mut runs = Vec::with_capacity(built.len());
        for (cfg, hash, t, seed) in built {
            let mut parts = vec![cfg.method.name().to_string()];
            for k in varied.iter().filter(|k| knob_applies(cfg.method, k)) {
                let v = get_path(&t, k);
                // Knobs only varied by [[include]] grids are spelled where they differ from the base.
                let main_key = grid.iter().any(|(g, _)| g == k);
                if let Some(v) = v.filter(|&v| main_key || get_path(&base, k) != Some(v)) {
                    parts.push(token(k, v));
                }
            }
            parts.push(format!("s{seed}"));
            let id = parts.join("-");
            if let Some(first) = ids.insert(id.clone(), hash.clone()) {
                return Err(SuiteError::DuplicateId {
                    file: cx.file.clone(),
                    id,
                    first,
                    second: hash,
                });
            }
            cfg.validate().map_err(|error| SuiteError::Invalid {
                file: cx.file.clone(),
                run_id: id.clone(),
                error,
            })?;
            runs.push(SuiteRun {
                id,
                config: cfg,
                hash,
            });
        }
        Ok(Suite {
            name,
            description: raw.suite.description,
            file: file.to_path_buf(),
            source: text.to_string(),
            seeds,
            varied,
            runs,
        })
    }

    /// The run with this id.
    pub fn run(&self, id: &str) -> Option<&SuiteRun> {
        self.runs.iter().find(|r| r.id == id)
    }
}

/// 1-based line and column of byte offset `at`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests;
