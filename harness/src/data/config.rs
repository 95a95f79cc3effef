//! The data configuration (`[data]` table of a suite or run file) and its validation.
//!
//! One flat table with `kind` choosing the source; fields that belong to another kind are
//! rejected (so a typo or a copy-paste leftover never passes silently), unknown fields too.
//!
//! ```toml
//! [data]
//! kind = "synthetic"            # "synthetic" | "textdir" | "tokenfile"
//! seed = 0                      # corpus seed: sources, eval split, probe set, site mixtures
//! heterogeneity = { kind = "dirichlet", alpha = 0.5 }   # or { kind = "iid" }, { kind = "domain_per_site" }
//! eval_sequences = 32           # held-out sequences per domain
//! probe_sequences = 4           # probe sequences per domain (routing metrics)
//! n_domains = 4                 # synthetic only
//! alphabet_sizes = [16, 24, 32, 48]    # synthetic only, default cycles through these
//! concentrations = [0.1, 0.15, 0.2, 0.3]  # synthetic only, Dirichlet α of transition rows
//! # path = "corpus/"            # textdir / tokenfile
//! # eval_fraction = 0.1         # textdir / tokenfile (tail held out; tokenfile: without val_path)
//! # separator = "\n\n"         # textdir: bytes put between files
//! # split_by_subdir = true      # textdir: one domain per top-level subdirectory
//! # vocab_size = 50304          # tokenfile: 1..=65536
//! # val_path = "val.bin"        # tokenfile: separate validation file
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::DataError;

/// Alphabet sizes of the synthetic domains when not given: domain d gets entry d mod 4.
pub const DEFAULT_ALPHABET_SIZES: [usize; 4] = [16, 24, 32, 48];
/// Dirichlet concentrations of the synthetic transition rows when not given (d mod 4).
/// Smaller α gives sparser rows, a lower entropy floor, an easier domain.
pub const DEFAULT_CONCENTRATIONS: [f64; 4] = [0.1, 0.15, 0.2, 0.3];
/// Default number of synthetic domains.
pub const DEFAULT_N_DOMAINS: usize = 4;
/// Default held-out sequences per domain.
pub const DEFAULT_EVAL_SEQUENCES: usize = 32;
/// Default probe sequences per domain.
pub const DEFAULT_PROBE_SEQUENCES: usize = 4;
/// Default held-out tail fraction for textdir and tokenfile.
pub const DEFAULT_EVAL_FRACTION: f64 = 0.1;
/// Default bytes put between concatenated text files.
pub const DEFAULT_SEPARATOR: &str = "\n\n";
/// Largest vocabulary a uint16 token file can address.
pub const MAX_TOKENFILE_VOCAB: usize = 65536;
/// Most synthetic domains accepted.
pub const MAX_SYNTHETIC_DOMAINS: usize = 64;

/// Which source the data comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataKind {
    /// Built-in multi-domain Markov corpus with known entropy floors.
    Synthetic,
    /// A local directory of text files, byte-level.
    Textdir,
    /// A nanoGPT-style uint16 little-endian token file.
    Tokenfile,
}

impl DataKind {
    fn name(self) -> &'static str {
        match self {
            DataKind::Synthetic => "synthetic",
            DataKind::Textdir => "textdir",
            DataKind::Tokenfile => "tokenfile",
        }
    }
}

/// How the domain mixture differs between sites (the heterogeneity knob).
///
/// With D domains, site s draws the domain of each sequence from weights w_s:
/// - `iid`: w_s = (1/D, …, 1/D) for every site;
/// - `domain_per_site`: w_s = one-hot(s mod D) (with fewer sites than domains, some domains
///   are never trained on; with more, several sites share a domain);
/// - `dirichlet { alpha }`: w_s ~ Dir(α·1_D), seeded by (`data.seed`, s). α → ∞ tends to
///   `iid`, α → 0 to one domain per site (chosen at random).
///
/// With one domain (textdir without subdirectories, tokenfile) all three are the same.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Heterogeneity {
    /// Every site samples the uniform domain mixture.
    #[default]
    Iid,
    /// Site s sees only domain s mod D.
    DomainPerSite,
    /// Site mixtures drawn from a symmetric Dirichlet with concentration `alpha` > 0.
    Dirichlet {
        /// Concentration α (> 0, finite).
        alpha: f64,
    },
}

/// The `[data]` configuration. Build it from TOML ([`DataConfig::from_toml_str`]) or with
/// the constructors, then open it with [`super::Dataset::open`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Source kind.
    pub kind: DataKind,
    /// Corpus seed: synthetic sources, eval split, probe set and site mixtures derive from it
    /// (the training streams also take the run seed, see `Dataset::site_batch`).
    #[serde(default)]
    pub seed: u64,
    /// Heterogeneity of site shards.
    #[serde(default)]
    pub heterogeneity: Heterogeneity,
    /// Held-out sequences per domain (file sources: at most as many as fit without overlap).
    #[serde(default = "default_eval_sequences")]
    pub eval_sequences: usize,
    /// Probe sequences per domain.
    #[serde(default = "default_probe_sequences")]
    pub probe_sequences: usize,
    /// Synthetic: number of domains (default 4, or the length of the lists below).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_domains: Option<usize>,
    /// Synthetic: alphabet size per domain (2..=256, disjoint alphabets, sum ≤ 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alphabet_sizes: Option<Vec<usize>>,
    /// Synthetic: Dirichlet concentration of the transition rows per domain (> 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concentrations: Option<Vec<f64>>,
    /// Textdir: the directory; tokenfile: the training token file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Textdir / tokenfile: fraction of each domain's tail held out for eval, in (0, 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_fraction: Option<f64>,
    /// Textdir: separator put between files (default "\n\n").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
    /// Textdir: one domain per top-level subdirectory (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_by_subdir: Option<bool>,
    /// Tokenfile: vocabulary size, 1..=65536 (every token must be below it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
    /// Tokenfile: separate validation token file (otherwise the tail fraction is held out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_path: Option<PathBuf>,
}

fn default_eval_sequences() -> usize {
    DEFAULT_EVAL_SEQUENCES
}

fn default_probe_sequences() -> usize {
    DEFAULT_PROBE_SEQUENCES
}

impl Default for DataConfig {
    /// The built-in synthetic corpus with its defaults.
    fn default() -> Self {
        DataConfig::synthetic(DEFAULT_N_DOMAINS)
    }
}

/// A validated source description with defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum SourceSpec {
    Synthetic {
        alphabet_sizes: Vec<usize>,
        concentrations: Vec<f64>,
    },
    Textdir {
        path: PathBuf,
        eval_fraction: f64,
        separator: Vec<u8>,
        split_by_subdir: bool,
    },
    Tokenfile {
        path: PathBuf,
        val_path: Option<PathBuf>,
        vocab_size: usize,
        eval_fraction: f64,
    },
}

impl DataConfig {
    fn blank(kind: DataKind) -> DataConfig {
        DataConfig {
            kind,
            seed: 0,
            heterogeneity: Heterogeneity::Iid,
            eval_sequences: DEFAULT_EVAL_SEQUENCES,
            probe_sequences: DEFAULT_PROBE_SEQUENCES,
            n_domains: None,
            alphabet_sizes: None,
            concentrations: None,
            path: None,
            eval_fraction: None,
            separator: None,
            split_by_subdir: None,
            vocab_size: None,
            val_path: None,
        }
    }

    /// The synthetic corpus with `n_domains` domains and default alphabets/concentrations.
    pub fn synthetic(n_domains: usize) -> DataConfig {
        DataConfig {
            n_domains: Some(n_domains),
            ..DataConfig::blank(DataKind::Synthetic)
        }
    }

    /// A directory of text files.
    pub fn textdir(path: impl Into<PathBuf>) -> DataConfig {
        DataConfig {
            path: Some(path.into()),
            ..DataConfig::blank(DataKind::Textdir)
        }
    }

    /// A uint16 token file with the given vocabulary size.
    pub fn tokenfile(path: impl Into<PathBuf>, vocab_size: usize) -> DataConfig {
        DataConfig {
            path: Some(path.into()),
            vocab_size: Some(vocab_size),
            ..DataConfig::blank(DataKind::Tokenfile)
        }
    }

    /// Parses a `[data]` table body (TOML text whose top level is the data table).
    /// Errors are one line: the serde message and the byte span.
    pub fn from_toml_str(text: &str) -> Result<DataConfig, DataError> {
        let cfg: DataConfig = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!(" (at bytes {}..{})", s.start, s.end))
                .unwrap_or_default();
            DataError::Parse(format!("{}{at}", e.message().replace('\n', " ")))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every field and cross-field rule (without touching the file system).
    pub fn validate(&self) -> Result<(), DataError> {
        self.resolve().map(|_| ())
    }

    /// Validates and fills in defaults.
    pub(crate) fn resolve(&self) -> Result<SourceSpec, DataError> {
        if self.eval_sequences == 0 {
            return Err(DataError::invalid(
                "eval_sequences",
                "0 is out of range; allowed: at least 1",
            ));
        }
        if self.probe_sequences == 0 {
            return Err(DataError::invalid(
                "probe_sequences",
                "0 is out of range; allowed: at least 1",
            ));
        }
        if let Heterogeneity::Dirichlet { alpha } = self.heterogeneity {
            if !(alpha > 0.0 && alpha.is_finite()) {
                return Err(DataError::invalid(
                    "heterogeneity.alpha",
                    format!("{alpha} is out of range; allowed: a finite number > 0"),
                ));
            }
        }
        let kind = self.kind;
        let reject = |field: &'static str, present: bool, used_by: &str| -> Result<(), DataError> {
            if present {
                Err(DataError::invalid(
                    field,
                    format!("not used by kind = \"{}\" (only by {used_by})", kind.name()),
                ))
            } else {
                Ok(())
            }
        };
        match kind {
            DataKind::Synthetic => {
                reject("path", self.path.is_some(), "\"textdir\" and \"tokenfile\"")?;
                reject(
                    "eval_fraction",
                    self.eval_fraction.is_some(),
                    "\"textdir\" and \"tokenfile\"",
                )?;
                reject("separator", self.separator.is_some(), "\"textdir\"")?;
                reject(
                    "split_by_subdir",
                    self.split_by_subdir.is_some(),
                    "\"textdir\"",
                )?;
                reject("vocab_size", self.vocab_size.is_some(), "\"tokenfile\"")?;
                reject("val_path", self.val_path.is_some(), "\"tokenfile\"")?;
                self.resolve_synthetic()
            }
            DataKind::Textdir => {
                reject("n_domains", self.n_domains.is_some(), "\"synthetic\"")?;
                reject(
                    "alphabet_sizes",
                    self.alphabet_sizes.is_some(),
                    "\"synthetic\"",
                )?;
                reject(
                    "concentrations",
                    self.concentrations.is_some(),
                    "\"synthetic\"",
                )?;
                reject(
                    "vocab_size",
                    self.vocab_size.is_some(),
                    "\"tokenfile\" (textdir is byte-level, vocab 256)",
                )?;
                reject("val_path", self.val_path.is_some(), "\"tokenfile\"")?;
                Ok(SourceSpec::Textdir {
                    path: self.required_path()?,
                    eval_fraction: self.resolve_eval_fraction()?,
                    separator: self
                        .separator
                        .as_deref()
                        .unwrap_or(DEFAULT_SEPARATOR)
                        .as_bytes()
                        .to_vec(),
                    split_by_subdir: self.split_by_subdir.unwrap_or(true),
                })
            }
            DataKind::Tokenfile => {
                reject("n_domains", self.n_domains.is_some(), "\"synthetic\"")?;
                reject(
                    "alphabet_sizes",
                    self.alphabet_sizes.is_some(),
                    "\"synthetic\"",
                )?;
                reject(
                    "concentrations",
                    self.concentrations.is_some(),
                    "\"synthetic\"",
                )?;
                reject("separator", self.separator.is_some(), "\"textdir\"")?;
                reject(
                    "split_by_subdir",
                    self.split_by_subdir.is_some(),
                    "\"textdir\"",
                )?;
                let vocab_size = match self.vocab_size {
                    None => {
                        return Err(DataError::invalid(
                            "vocab_size",
                            "missing; required for kind = \"tokenfile\", allowed 1..=65536",
                        ))
                    }
                    Some(v) if v == 0 || v > MAX_TOKENFILE_VOCAB => {
                        return Err(DataError::invalid(
                            "vocab_size",
                            format!("{v} is out of range; allowed 1..=65536 (tokens are uint16)"),
                        ))
                    }
                    Some(v) => v,
                };
                Ok(SourceSpec::Tokenfile {
                    path: self.required_path()?,
                    val_path: self.val_path.clone(),
                    vocab_size,
                    eval_fraction: self.resolve_eval_fraction()?,
                })
            }
        }
    }

    fn required_path(&self) -> Result<PathBuf, DataError> {
        self.path.clone().ok_or_else(|| {
            DataError::invalid(
                "path",
                format!("missing; required for kind = \"{}\"", self.kind.name()),
            )
        })
    }

    fn resolve_eval_fraction(&self) -> Result<f64, DataError> {
        if self.kind == DataKind::Tokenfile
            && self.val_path.is_some()
            && self.eval_fraction.is_some()
        {
            return Err(DataError::invalid(
                "eval_fraction",
                "not used when data.val_path is given (the whole val file is held out); give one of them",
            ));
        }
        let f = self.eval_fraction.unwrap_or(DEFAULT_EVAL_FRACTION);
        if !(f > 0.0 && f < 1.0) {
            return Err(DataError::invalid(
                "eval_fraction",
                format!("{f} is out of range; allowed: strictly between 0 and 1"),
            ));
        }
        Ok(f)
    }

    fn resolve_synthetic(&self) -> Result<SourceSpec, DataError> {
        let n = match (self.n_domains, &self.alphabet_sizes, &self.concentrations) {
            (Some(n), _, _) => n,
            (None, Some(a), _) => a.len(),
            (None, None, Some(c)) => c.len(),
            (None, None, None) => DEFAULT_N_DOMAINS,
        };
        if n == 0 || n > MAX_SYNTHETIC_DOMAINS {
            return Err(DataError::invalid(
                "n_domains",
                format!("{n} is out of range; allowed 1..={MAX_SYNTHETIC_DOMAINS}"),
            ));
        }
        let alphabet_sizes: Vec<usize> = match &self.alphabet_sizes {
            Some(a) if a.len() != n => {
                return Err(DataError::invalid(
                    "alphabet_sizes",
                    format!(
                        "has {} entries but there are {n} domains; give one size per domain",
                        a.len()
                    ),
                ))
            }
            Some(a) => a.clone(),
            None => (0..n)
                .map(|d| DEFAULT_ALPHABET_SIZES[d % DEFAULT_ALPHABET_SIZES.len()])
                .collect(),
        };
        if let Some((d, &k)) = alphabet_sizes
            .iter()
            .enumerate()
            .find(|(_, &k)| !(2..=256).contains(&k))
        {
            return Err(DataError::invalid(
                "alphabet_sizes",
                format!("entry {d} is {k}; allowed 2..=256 symbols per domain"),
            ));
        }
        let total: usize = alphabet_sizes.iter().sum();
        if total > 256 {
            return Err(DataError::invalid(
                if self.alphabet_sizes.is_some() { "alphabet_sizes" } else { "n_domains" },
                format!(
                    "{n} domains with alphabet sizes {alphabet_sizes:?} need {total} distinct bytes, \
                     more than 256 (alphabets are disjoint); use fewer domains or smaller data.alphabet_sizes"
                ),
            ));
        }
        let concentrations: Vec<f64> = match &self.concentrations {
            Some(c) if c.len() != n => {
                return Err(DataError::invalid(
                    "concentrations",
                    format!(
                        "has {} entries but there are {n} domains; give one per domain",
                        c.len()
                    ),
                ))
            }
            Some(c) => c.clone(),
            None => (0..n)
                .map(|d| DEFAULT_CONCENTRATIONS[d % DEFAULT_CONCENTRATIONS.len()])
                .collect(),
        };
        if let Some((d, &a)) = concentrations
            .iter()
            .enumerate()
            .find(|(_, &a)| !(a > 0.0 && a.is_finite()))
        {
            return Err(DataError::invalid(
                "concentrations",
                format!("entry {d} is {a}; allowed: a finite number > 0"),
            ));
        }
        Ok(SourceSpec::Synthetic {
            alphabet_sizes,
            concentrations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        DataConfig::from_toml_str(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_each_kind_and_round_trips() {
        let c = DataConfig::from_toml_str(
            "kind = \"synthetic\"\nseed = 3\nheterogeneity = { kind = \"dirichlet\", alpha = 0.5 }\nn_domains = 2\n",
        )
        .unwrap();
        assert_eq!(c.kind, DataKind::Synthetic);
        assert_eq!(c.seed, 3);
        assert_eq!(c.heterogeneity, Heterogeneity::Dirichlet { alpha: 0.5 });
        assert_eq!(c.eval_sequences, DEFAULT_EVAL_SEQUENCES);
        assert_eq!(
            c.resolve().unwrap(),
            SourceSpec::Synthetic {
                alphabet_sizes: vec![16, 24],
                concentrations: vec![0.1, 0.15]
            }
        );
        let back: DataConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);

        let c = DataConfig::from_toml_str(
            "kind = \"textdir\"\npath = \"/x\"\nheterogeneity = { kind = \"domain_per_site\" }",
        )
        .unwrap();
        assert_eq!(
            c.resolve().unwrap(),
            SourceSpec::Textdir {
                path: "/x".into(),
                eval_fraction: 0.1,
                separator: b"\n\n".to_vec(),
                split_by_subdir: true
            }
        );
        let c = DataConfig::from_toml_str(
            "kind = \"tokenfile\"\npath = \"t.bin\"\nvocab_size = 50304\nval_path = \"v.bin\"",
        )
        .unwrap();
        assert!(matches!(
            c.resolve().unwrap(),
            SourceSpec::Tokenfile {
                vocab_size: 50304,
                ..
            }
        ));
        assert_eq!(
            DataConfig::default().resolve().unwrap(),
            DataConfig::synthetic(4).resolve().unwrap()
        );
    }

    #[test]
    fn bad_configs_give_one_line_errors_naming_the_field() {
        let cases = [
            ("kind = \"bogus\"", "unknown variant `bogus`"),
            ("kind = \"synthetic\"\nn_domian = 3", "unknown field `n_domian`"),
            ("kind = \"synthetic\"\nvocab_size = 3", "data.vocab_size: not used by kind = \"synthetic\""),
            ("kind = \"synthetic\"\nn_domains = 0", "data.n_domains: 0 is out of range; allowed 1..=64"),
            ("kind = \"synthetic\"\nn_domains = 10", "data.n_domains: 10 domains with alphabet sizes"),
            ("kind = \"synthetic\"\nalphabet_sizes = [1, 4]", "data.alphabet_sizes: entry 0 is 1; allowed 2..=256"),
            ("kind = \"synthetic\"\nn_domains = 2\nconcentrations = [1.0]", "data.concentrations: has 1 entries but there are 2"),
            ("kind = \"synthetic\"\nconcentrations = [0.0]", "data.concentrations: entry 0 is 0; allowed"),
            ("kind = \"synthetic\"\nheterogeneity = { kind = \"dirichlet\", alpha = -1.0 }", "data.heterogeneity.alpha: -1 is out of range"),
            ("kind = \"synthetic\"\nheterogeneity = { kind = \"dirichlet\", alpah = 1.0 }", "unknown field `alpah`"),
            ("kind = \"synthetic\"\neval_sequences = 0", "data.eval_sequences: 0 is out of range"),
            ("kind = \"textdir\"", "data.path: missing; required for kind = \"textdir\""),
            ("kind = \"textdir\"\npath = \"x\"\neval_fraction = 1.0", "data.eval_fraction: 1 is out of range"),
            ("kind = \"tokenfile\"\npath = \"x\"", "data.vocab_size: missing; required"),
            ("kind = \"tokenfile\"\npath = \"x\"\nvocab_size = 0", "data.vocab_size: 0 is out of range; allowed 1..=65536"),
            ("kind = \"tokenfile\"\npath = \"x\"\nvocab_size = 65537", "data.vocab_size: 65537 is out of range; allowed 1..=65536"),
            ("kind = \"tokenfile\"\npath = \"x\"\nvocab_size = 5\nval_path = \"v\"\neval_fraction = 0.2", "data.eval_fraction: not used when data.val_path"),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(
                got.contains(want),
                "for {text:?}: got {got:?}, want {want:?}"
            );
            assert!(
                !got.contains('\n'),
                "multi-line error for {text:?}: {got:?}"
            );
        }
    }
}
