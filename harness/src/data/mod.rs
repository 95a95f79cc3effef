//! Training data: deterministic, per-site shards of byte- or token-level sequences.
//!
//! # Sources (`data.kind`)
//! - **`synthetic`** (built in, the default): D domains (default 4), each a stationary
//!   first-order Markov chain over its own disjoint alphabet of bytes, transition rows
//!   P(·|s) = (1 − ε)·Dir(α_d·1_K) + ε/K (ε = 10⁻³), all drawn from `data.seed`
//!   (`synthetic.rs`). Its **entropy floor**, the best cross-entropy any model can reach in
//!   nats/token, is known exactly:
//!
//!   H_d = Σ_s π_s · H(P(·|s)),   H(P(·|s)) = −Σ_j P_sj ln P_sj,   π = πP (power iteration).
//!
//!   Sequences start from π, so the floor is the same at every target position. Defaults
//!   (alphabets 16/24/32/48, α 0.1/0.15/0.2/0.3) give, for `data.seed = 0`, floors of
//!   1.1938, 1.6188, 2.2814 and 2.8643 nats (mean 1.990), well below the uniform
//!   ln 256 = 5.545 (exact values for any seed: [`Dataset::domains`]).
//! - **`textdir`**: any local directory of text files, byte-level (vocab 256); one domain,
//!   or one per top-level subdirectory (`textdir.rs`). Floor unknown (`None`).
//! - **`tokenfile`**: a nanoGPT-style uint16 little-endian token file with `vocab_size`
//!   from the config, validated at open (`tokenfile.rs`). Floor unknown.
//!
//! # Sequences and batches
//! A row is x_0 … x_T (T = `seq_len`) of one domain: inputs x_0 … x_{T−1}, targets
//! x_1 … x_T ([`Batch`], `Vec<i64>` row-major `[batch, seq]`).
//!
//! # Per-site shards and the heterogeneity knob (`data.heterogeneity`)
//! Site s draws each row's domain from its mixture w_s ([`Dataset::site_weights`]):
//! `iid`: w_s = uniform over the D domains; `domain_per_site`: w_s = one-hot(s mod D);
//! `dirichlet { alpha }`: w_s ~ Dir(α·1_D) seeded by (`data.seed`, s); large α → near
//! uniform, small α → concentrated on one domain. The partition depends on the data config
//! only (not on the run seed), so every method sees the same shards. With D = 1 the three
//! are identical.
//!
//! # Determinism and independence
//! Every random choice comes from [`crate::rng::Rng`] (bit-identical on every machine) at
//! an address: row r of step t of site s under run seed σ uses
//! `Rng::new(data.seed).fork(TRAIN).fork(σ).fork(s).fork(t).fork(r)`. So a site's stream
//! does not depend on how many batches other sites drew or on how many sites there are,
//! a batch can be recomputed from its step alone (bit-exact resume), and a site's batch of
//! b rows is the first b rows of its batch of b' > b rows.
//!
//! **One site with M·b equals M sites with b**: [`Dataset::joint_batch`] is the
//! concatenation, site by site, of the M sites' batches for the same step; the DDP
//! equivalence test trains one site on it.
//!
//! # Held-out data
//! - Eval ([`Dataset::eval_batches`]): per domain a fixed set of `eval_sequences` sequences
//!   (synthetic: addressed under stream EVAL of `data.seed`, disjoint from every training
//!   stream; files: evenly spaced non-overlapping windows of the held-out tail).
//! - Probe ([`Dataset::probe_batch`]): per domain `probe_sequences` sequences (default 4)
//!   under stream PROBE, identical across runs, seeds and methods; used for routing metrics.
//!
//! Degenerate cases: `domain_per_site` with fewer sites than domains trains on only the first
//! M domains (eval still covers all); a site mixture from a Dirichlet with tiny α may be
//! one-hot up to rounding.

mod batch;
mod config;
mod error;
pub mod synthetic;
mod textdir;
mod tokenfile;
mod windows;

pub use batch::Batch;
pub use config::{
    DataConfig, DataKind, Heterogeneity, DEFAULT_ALPHABET_SIZES, DEFAULT_CONCENTRATIONS,
    DEFAULT_EVAL_FRACTION, DEFAULT_EVAL_SEQUENCES, DEFAULT_N_DOMAINS, DEFAULT_PROBE_SEQUENCES,
    DEFAULT_SEPARATOR, MAX_TOKENFILE_VOCAB,
};
pub use error::DataError;
pub use synthetic::{MarkovDomain, SyntheticCorpus};

use serde::{Deserialize, Serialize};

use crate::rng::Rng;
use config::SourceSpec;
use windows::SplitTokens;

/// Stream ids under the corpus seed `data.seed` (one per purpose, never reused).
pub(crate) mod streams {
    pub(crate) const STREAM_ALPHABETS: u64 = 0xA1;
    pub(crate) const STREAM_CHAINS: u64 = 0xC4;
    pub(crate) const STREAM_MIXTURE: u64 = 0x31;
    pub(crate) const STREAM_TRAIN: u64 = 0x7A;
    pub(crate) const STREAM_EVAL: u64 = 0xE1;
    pub(crate) const STREAM_PROBE: u64 = 0x9B;
}
use streams::{STREAM_EVAL, STREAM_MIXTURE, STREAM_PROBE, STREAM_TRAIN};

/// What the metrics and reports need to know about a domain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DomainInfo {
    /// Domain name (`markov0`…, a subdirectory name, a file stem).
    pub name: String,
    /// The best achievable cross-entropy in nats/token, when known (synthetic only).
    pub entropy_floor_nats: Option<f64>,
    /// Training tokens (file sources); `None` for the synthetic corpus (unbounded).
    pub train_tokens: Option<u64>,
    /// Held-out tokens (file sources); `None` for the synthetic corpus.
    pub eval_tokens: Option<u64>,
}

enum Source {
    Synthetic(SyntheticCorpus),
    Files(Vec<SplitTokens>),
}

/// An opened data source at a fixed sequence length: the one object model, training and
/// methods ask for batches.
pub struct Dataset {
    config: DataConfig,
    seq_len: usize,
    vocab_size: usize,
    source: Source,
    domains: Vec<DomainInfo>,
}

impl std::fmt::Debug for Dataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataset")
            .field("config", &self.config)
            .field("seq_len", &self.seq_len)
            .field("vocab_size", &self.vocab_size)
            .field("domains", &self.domains)
            .finish()
    }
}

/// A site's position in its training stream; serialisable, so a checkpoint can carry it.
/// Batches are addressed by (run seed, site, step), so `step` is all the state there is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteStream {
    /// This site, `0..n_sites`.
    pub site: usize,
    /// Number of sites.
    pub n_sites: usize,
    /// The run seed.
    pub seed: u64,
    /// The next step to draw.
    pub step: u64,
}

impl SiteStream {
    /// The batch of the current step, then advances. Same as
    /// `ds.site_batch(site, n_sites, seed, step, batch_size)`.
    pub fn next_batch(&mut self, ds: &Dataset, batch_size: usize) -> Batch {
        let b = ds.site_batch_unchecked(self.site, self.seed, self.step, batch_size);
        self.step += 1;
        b
    }

    /// An endless iterator of this site's batches from the current step.
    pub fn batches(mut self, ds: &Dataset, batch_size: usize) -> impl Iterator<Item = Batch> + '_ {
        std::iter::from_fn(move || Some(self.next_batch(ds, batch_size)))
    }
}

impl Dataset {
    /// Opens the source for sequences of `seq_len` tokens (reads and validates files here;
    /// every later call is infallible apart from out-of-range arguments).
    pub fn open(config: &DataConfig, seq_len: usize) -> Result<Dataset, DataError> {
        if seq_len == 0 {
            return Err(DataError::Usage(
                "seq_len: 0 is out of range; allowed: at least 1".to_string(),
            ));
        }
        let spec = config.resolve()?;
        let (vocab_size, source, domains) = match spec {
            SourceSpec::Synthetic {
                alphabet_sizes,
                concentrations,
            } => {
                let corpus = SyntheticCorpus::new(config.seed, &alphabet_sizes, &concentrations)?;
                let domains = corpus
                    .domains()
                    .iter()
                    .enumerate()
                    .map(|(d, m)| DomainInfo {
                        name: format!("markov{d}"),
                        entropy_floor_nats: Some(m.entropy_rate_nats()),
                        train_tokens: None,
                        eval_tokens: None,
                    })
                    .collect();
                (256, Source::Synthetic(corpus), domains)
            }
            SourceSpec::Textdir {
                path,
                eval_fraction,
                separator,
                split_by_subdir,
            } => {
                let loaded =
                    textdir::load(&path, &separator, split_by_subdir, eval_fraction, seq_len)?;
                let domains = loaded
                    .iter()
                    .map(|d| file_domain_info(d.name.clone(), &d.tokens))
                    .collect();
                (
                    256,
                    Source::Files(loaded.into_iter().map(|d| d.tokens).collect()),
                    domains,
                )
            }
            SourceSpec::Tokenfile {
                path,
                val_path,
                vocab_size,
                eval_fraction,
            } => {
                let (name, tokens) = tokenfile::load(
                    &path,
                    val_path.as_deref(),
                    vocab_size,
                    eval_fraction,
                    seq_len,
                )?;
                let info = file_domain_info(name, &tokens);
                (vocab_size, Source::Files(vec![tokens]), vec![info])
            }
        };
        Ok(Dataset {
            config: config.clone(),
            seq_len,
            vocab_size,
            source,
            domains,
        })
    }

    /// The configuration this dataset was opened with.
    pub fn config(&self) -> &DataConfig {
        &self.config
    }

    /// Tokens per row of every batch.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Vocabulary size: 256 for synthetic and textdir, `data.vocab_size` for a token file.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The domains, in index order (the `domain` of [`Batch::domains`]).
    pub fn domains(&self) -> &[DomainInfo] {
        &self.domains
    }

    /// Number of domains.
    pub fn n_domains(&self) -> usize {
        self.domains.len()
    }

    /// The synthetic corpus (chains, alphabets, floors), if that is the source.
    pub fn synthetic(&self) -> Option<&SyntheticCorpus> {
        match &self.source {
            Source::Synthetic(c) => Some(c),
            Source::Files(_) => None,
        }
    }

    /// Site `site`'s domain mixture (sums to 1) under the heterogeneity knob.
    pub fn site_weights(&self, site: usize) -> Vec<f64> {
        let d = self.n_domains();
        match self.config.heterogeneity {
            Heterogeneity::Iid => vec![1.0 / d as f64; d],
            Heterogeneity::DomainPerSite => {
                let mut w = vec![0.0; d];
                w[site % d] = 1.0;
                w
            }
            Heterogeneity::Dirichlet { alpha } => {
                if d == 1 {
                    return vec![1.0];
                }
                Rng::new(self.config.seed)
                    .fork(STREAM_MIXTURE)
                    .fork(site as u64)
                    .dirichlet(&vec![alpha; d])
            }
        }
    }

    /// A training stream for `site` of `n_sites` under run seed `seed`, at step 0.
    pub fn site_stream(
        &self,
        site: usize,
        n_sites: usize,
        seed: u64,
    ) -> Result<SiteStream, DataError> {
        check_site(site, n_sites)?;
        Ok(SiteStream {
            site,
            n_sites,
            seed,
            step: 0,
        })
    }

    /// The batch of `batch_size` rows that `site` of `n_sites` trains on at `step` under run
    /// seed `seed` (random access; see the module doc for the addressing).
    pub fn site_batch(
        &self,
        site: usize,
        n_sites: usize,
        seed: u64,
        step: u64,
        batch_size: usize,
    ) -> Result<Batch, DataError> {
        check_site(site, n_sites)?;
        Ok(self.site_batch_unchecked(site, seed, step, batch_size))
    }

    /// What one site with `n_sites · per_site_batch` rows sees at `step`: the sites'
    /// batches of that step concatenated in site order (rows of site 0 first).
    pub fn joint_batch(
        &self,
        n_sites: usize,
        seed: u64,
        step: u64,
        per_site_batch: usize,
    ) -> Result<Batch, DataError> {
        check_site(0, n_sites)?;
        let parts: Vec<Batch> = (0..n_sites)
            .map(|s| self.site_batch_unchecked(s, seed, step, per_site_batch))
            .collect();
        Batch::concat(&parts)
    }

    fn site_batch_unchecked(&self, site: usize, seed: u64, step: u64, batch_size: usize) -> Batch {
        let weights = self.site_weights(site);
        let base = Rng::new(self.config.seed)
            .fork(STREAM_TRAIN)
            .fork(seed)
            .fork(site as u64)
            .fork(step);
        let len = self.seq_len + 1;
        let mut batch = Batch::with_capacity(self.seq_len, batch_size);
        let mut row_tokens = Vec::with_capacity(len);
        for r in 0..batch_size {
            let mut rng = base.fork(r as u64);
            let domain = rng.categorical(&weights);
            row_tokens.clear();
            match &self.source {
                Source::Synthetic(c) => {
                    c.domain(domain).sample_into(&mut rng, len, &mut row_tokens)
                }
                Source::Files(f) => f[domain].train_window(&mut rng, len, &mut row_tokens),
            }
            batch.push_sequence(domain, &row_tokens);
        }
        batch
    }

    /// Number of eval sequences of `domain` (`eval_sequences`, or fewer for a short
    /// held-out file part).
    pub fn eval_sequence_count(&self, domain: usize) -> Result<usize, DataError> {
        self.check_domain(domain)?;
        Ok(match &self.source {
            Source::Synthetic(_) => self.config.eval_sequences,
            Source::Files(f) => f[domain].eval_count(self.seq_len + 1, self.config.eval_sequences),
        })
    }

    /// The fixed held-out set of `domain`, in batches of at most `batch_size` rows (the last
    /// may be shorter). Identical on every call.
    pub fn eval_batches(&self, domain: usize, batch_size: usize) -> Result<Vec<Batch>, DataError> {
        let count = self.eval_sequence_count(domain)?;
        if batch_size == 0 {
            return Err(DataError::Usage(
                "eval_batches: batch_size 0; allowed: at least 1".to_string(),
            ));
        }
        let len = self.seq_len + 1;
        let mut out = Vec::with_capacity(count.div_ceil(batch_size));
        let mut row_tokens = Vec::with_capacity(len);
        for start in (0..count).step_by(batch_size) {
            let rows = batch_size.min(count - start);
            let mut batch = Batch::with_capacity(self.seq_len, rows);
            for i in start..start + rows {
                row_tokens.clear();
                match &self.source {
                    Source::Synthetic(c) => {
                        let mut rng = self.held_out_rng(STREAM_EVAL, domain, i);
                        c.domain(domain).sample_into(&mut rng, len, &mut row_tokens)
                    }
                    Source::Files(f) => f[domain].eval_window(i, count, len, &mut row_tokens),
                }
                batch.push_sequence(domain, &row_tokens);
            }
            out.push(batch);
        }
        Ok(out)
    }

    /// The fixed probe set of `domain`: `probe_sequences` rows, identical across calls,
    /// runs, run seeds and methods.
    pub fn probe_batch(&self, domain: usize) -> Result<Batch, DataError> {
        self.check_domain(domain)?;
        let len = self.seq_len + 1;
        let count = self.config.probe_sequences;
        let mut batch = Batch::with_capacity(self.seq_len, count);
        let mut row_tokens = Vec::with_capacity(len);
        for i in 0..count {
            let mut rng = self.held_out_rng(STREAM_PROBE, domain, i);
            row_tokens.clear();
            match &self.source {
                Source::Synthetic(c) => {
                    c.domain(domain).sample_into(&mut rng, len, &mut row_tokens)
                }
                Source::Files(f) => f[domain].probe_window(&mut rng, len, &mut row_tokens),
            }
            batch.push_sequence(domain, &row_tokens);
        }
        Ok(batch)
    }

    fn held_out_rng(&self, stream: u64, domain: usize, i: usize) -> Rng {
        Rng::new(self.config.seed)
            .fork(stream)
            .fork(domain as u64)
            .fork(i as u64)
    }

    fn check_domain(&self, domain: usize) -> Result<(), DataError> {
        if domain >= self.n_domains() {
            return Err(DataError::Usage(format!(
                "domain {domain} out of range: the dataset has {} domains",
                self.n_domains()
            )));
        }
        Ok(())
    }
}

fn check_site(site: usize, n_sites: usize) -> Result<(), DataError> {
    if n_sites == 0 || site >= n_sites {
        return Err(DataError::Usage(format!(
            "site {site} out of range: n_sites is {n_sites}; allowed sites 0..n_sites, n_sites >= 1"
        )));
    }
    Ok(())
}

fn file_domain_info(name: String, tokens: &SplitTokens) -> DomainInfo {
    DomainInfo {
        name,
        entropy_floor_nats: None,
        train_tokens: Some(tokens.train_len() as u64),
        eval_tokens: Some(tokens.eval_len() as u64),
    }
}

#[cfg(test)]
mod tests;
