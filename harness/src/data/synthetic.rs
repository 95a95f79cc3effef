//! The built-in synthetic multi-domain corpus: one stationary first-order Markov chain per
//! domain, over its own alphabet of bytes, with an exactly computable entropy rate.
//!
//! Construction from `data.seed` (all through [`crate::rng::Rng`], bit-identical everywhere):
//! - **Alphabets.** A seeded permutation of the 256 byte values is cut into consecutive
//!   pieces of `alphabet_sizes[d]` bytes: the domains' alphabets are disjoint (sorted within
//!   a domain). State i of domain d is its i-th byte.
//! - **Transitions.** Row s of domain d: P(·|s) = (1 − ε)·q_s + ε/K with q_s ~ Dir(α_d·1_K),
//!   K = alphabet size, α_d = `concentrations[d]`, ε = [`SMOOTHING`]. Small α gives sparse,
//!   predictable rows (a low floor); the ε floor makes every transition possible, so the
//!   chain is irreducible and aperiodic, π is unique and every NLL is finite.
//! - **Stationary distribution** π = πP by power iteration from the uniform vector until
//!   Σ|π_{n+1} − π_n| < 1e-14.
//! - **Entropy rate** (the floor, nats/token): H = Σ_s π_s · H(P(·|s)),
//!   H(P(·|s)) = −Σ_j P_sj ln P_sj.
//!
//! Sampling: x_0 ~ π, x_t ~ P(·|x_{t−1}). Since the chain starts stationary, every pair
//! (x_{t−1}, x_t) is distributed as (π, P), so the expected NLL of every target position
//! t ≥ 1 under the true chain is exactly H: the floor holds at every position of a
//! sequence, and a model that sees the previous token can reach it. (Position 0 has no
//! context; it is an input only, never a target.) No burn-in is needed.
//!
//! Degenerate cases: K = 2 with α → 0 gives near-deterministic rows (H → small); α → ∞
//! gives P → uniform and H → ln K. The floors of the default 4 domains (seed 0) are pinned
//! in the tests.

use crate::rng::{ln, Rng};

use super::error::DataError;

/// Uniform mixing weight ε of every transition row (keeps the chain ergodic).
pub const SMOOTHING: f64 = 1e-3;
/// Power-iteration stop: L1 change between iterates.
const STATIONARY_TOL: f64 = 1e-14;
/// Power-iteration cap (the ε mixing contracts by at least (1 − ε) per step).
const STATIONARY_MAX_ITERS: usize = 200_000;

use super::streams::{STREAM_ALPHABETS, STREAM_CHAINS};

/// One domain: a first-order Markov chain over `alphabet`.
#[derive(Clone, Debug)]
pub struct MarkovDomain {
    alphabet: Vec<u8>,
    concentration: f64,
    /// K×K row-major transition matrix.
    transition: Vec<f64>,
    /// Per-row cumulative sums (for sampling), K×K.
    transition_cdf: Vec<f64>,
    stationary: Vec<f64>,
    stationary_cdf: Vec<f64>,
    /// Byte → state; `None` for bytes outside the alphabet.
    state_of_byte: [Option<u16>; 256],
    entropy_rate_nats: f64,
}

fn cumulative(p: &[f64]) -> Vec<f64> {
    let mut acc = 0.0;
    p.iter()
        .map(|&x| {
            acc += x;
            acc
        })
        .collect()
}

/// Index drawn from a cumulative table (last entry is the total).
fn sample_cdf(cdf: &[f64], rng: &mut Rng) -> usize {
    let total = cdf[cdf.len() - 1];
    let u = rng.uniform_f64() * total;
    cdf.partition_point(|&c| c <= u).min(cdf.len() - 1)
}

/// Entropy −Σ p ln p of a distribution, in nats (terms with p = 0 contribute 0).
pub fn entropy_nats(p: &[f64]) -> f64 {
    -p.iter()
        .filter(|&&x| x > 0.0)
        .map(|&x| x * ln(x))
        .sum::<f64>()
}

impl MarkovDomain {
    fn new(
        alphabet: Vec<u8>,
        concentration: f64,
        rng: &mut Rng,
    ) -> Result<MarkovDomain, DataError> {
        let k = alphabet.len();
        let alpha = vec![concentration; k];
        let mut transition = Vec::with_capacity(k * k);
        for _ in 0..k {
            let q = rng.dirichlet(&alpha);
            transition.extend(
                q.iter()
                    .map(|&x| (1.0 - SMOOTHING) * x + SMOOTHING / k as f64),
            );
        }
        // Power iteration π ← πP.
        let mut pi = vec![1.0 / k as f64; k];
        let mut next = vec![0.0; k];
        let mut converged = false;
        for _ in 0..STATIONARY_MAX_ITERS {
            next.iter_mut().for_each(|x| *x = 0.0);
            for (s, &ps) in pi.iter().enumerate() {
                let row = &transition[s * k..(s + 1) * k];
                for (n, &p) in next.iter_mut().zip(row) {
                    *n += ps * p;
                }
            }
            let total: f64 = next.iter().sum();
            next.iter_mut().for_each(|x| *x /= total);
            let change: f64 = pi.iter().zip(&next).map(|(a, b)| (a - b).abs()).sum();
            std::mem::swap(&mut pi, &mut next);
            if change < STATIONARY_TOL {
                converged = true;
                break;
            }
        }
        if !converged {
            return Err(DataError::invalid(
                "concentrations",
                format!(
                    "the stationary distribution of a chain with α = {concentration} did not converge \
                     in {STATIONARY_MAX_ITERS} iterations; use a larger concentration"
                ),
            ));
        }
        let entropy_rate_nats = (0..k)
            .map(|s| pi[s] * entropy_nats(&transition[s * k..(s + 1) * k]))
            .sum();
        let transition_cdf = (0..k)
            .flat_map(|s| cumulative(&transition[s * k..(s + 1) * k]))
            .collect();
        let mut state_of_byte = [None; 256];
        for (i, &b) in alphabet.iter().enumerate() {
            state_of_byte[b as usize] = Some(i as u16);
        }
        Ok(MarkovDomain {
            stationary_cdf: cumulative(&pi),
            alphabet,
            concentration,
            transition,
            transition_cdf,
            stationary: pi,
            state_of_byte,
            entropy_rate_nats,
        })
    }

    /// The domain's bytes, sorted; state i is `alphabet()[i]`.
    pub fn alphabet(&self) -> &[u8] {
        &self.alphabet
    }

    /// The Dirichlet concentration α the rows were drawn with.
    pub fn concentration(&self) -> f64 {
        self.concentration
    }

    /// P(next state = `to` | state = `from`).
    pub fn transition_prob(&self, from: usize, to: usize) -> f64 {
        self.transition[from * self.alphabet.len() + to]
    }

    /// The stationary distribution π over states.
    pub fn stationary(&self) -> &[f64] {
        &self.stationary
    }

    /// The entropy rate H = Σ_s π_s H(P(·|s)) in nats/token: the best achievable
    /// cross-entropy of a next-token predictor on this domain.
    pub fn entropy_rate_nats(&self) -> f64 {
        self.entropy_rate_nats
    }

    /// The state of a byte, if it is in this domain's alphabet.
    pub fn state_of(&self, byte: i64) -> Option<usize> {
        usize::try_from(byte)
            .ok()
            .filter(|&b| b < 256)
            .and_then(|b| self.state_of_byte[b])
            .map(usize::from)
    }

    /// −ln P(`to` | `from`) under the true chain (bytes); `None` if either byte is not in
    /// the alphabet.
    pub fn nll_nats(&self, from: i64, to: i64) -> Option<f64> {
        Some(-ln(
            self.transition_prob(self.state_of(from)?, self.state_of(to)?)
        ))
    }

    /// Appends `len` bytes of the chain (x_0 ~ π) to `out`.
    pub fn sample_into(&self, rng: &mut Rng, len: usize, out: &mut Vec<i64>) {
        if len == 0 {
            return;
        }
        let k = self.alphabet.len();
        let mut s = sample_cdf(&self.stationary_cdf, rng);
        out.push(self.alphabet[s] as i64);
        for _ in 1..len {
            s = sample_cdf(&self.transition_cdf[s * k..(s + 1) * k], rng);
            out.push(self.alphabet[s] as i64);
        }
    }
}

/// All synthetic domains of one corpus seed.
#[derive(Clone, Debug)]
pub struct SyntheticCorpus {
    domains: Vec<MarkovDomain>,
}

impl SyntheticCorpus {
    /// Builds the chains (validated sizes: each 2..=256, sum ≤ 256; α > 0).
    pub(crate) fn new(
        seed: u64,
        alphabet_sizes: &[usize],
        concentrations: &[f64],
    ) -> Result<SyntheticCorpus, DataError> {
        let root = Rng::new(seed);
        // Fisher–Yates permutation of the byte values.
        let mut bytes: Vec<u8> = (0..=255u8).collect();
        let mut rng = root.fork(STREAM_ALPHABETS);
        for i in (1..bytes.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            bytes.swap(i, j);
        }
        let mut offset = 0;
        let mut domains = Vec::with_capacity(alphabet_sizes.len());
        for (d, (&k, &alpha)) in alphabet_sizes.iter().zip(concentrations).enumerate() {
            let mut alphabet = bytes[offset..offset + k].to_vec();
            alphabet.sort_unstable();
            offset += k;
            let mut rng = root.fork(STREAM_CHAINS).fork(d as u64);
            domains.push(MarkovDomain::new(alphabet, alpha, &mut rng)?);
        }
        Ok(SyntheticCorpus { domains })
    }

    /// Number of domains.
    pub fn n_domains(&self) -> usize {
        self.domains.len()
    }

    /// Domain `d` (panics if out of range).
    pub fn domain(&self, d: usize) -> &MarkovDomain {
        &self.domains[d]
    }

    /// All domains.
    pub fn domains(&self) -> &[MarkovDomain] {
        &self.domains
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::config::{DEFAULT_ALPHABET_SIZES, DEFAULT_CONCENTRATIONS};

    fn default_corpus(seed: u64) -> SyntheticCorpus {
        SyntheticCorpus::new(seed, &DEFAULT_ALPHABET_SIZES, &DEFAULT_CONCENTRATIONS).unwrap()
    }

    #[test]
    fn alphabets_are_disjoint_and_chains_are_stochastic() {
        let c = default_corpus(0);
        let mut seen = [false; 256];
        for d in c.domains() {
            for &b in d.alphabet() {
                assert!(!seen[b as usize], "byte {b} in two alphabets");
                seen[b as usize] = true;
            }
            let k = d.alphabet().len();
            for s in 0..k {
                let row: f64 = (0..k).map(|t| d.transition_prob(s, t)).sum();
                assert!((row - 1.0).abs() < 1e-12);
            }
            // π is stationary: πP = π.
            for t in 0..k {
                let v: f64 = (0..k)
                    .map(|s| d.stationary()[s] * d.transition_prob(s, t))
                    .sum();
                assert!((v - d.stationary()[t]).abs() < 1e-13);
            }
        }
        assert_eq!(seen.iter().filter(|&&x| x).count(), 16 + 24 + 32 + 48);
    }

    #[test]
    fn entropy_floors_are_pinned_ordered_and_below_uniform() {
        let c = default_corpus(0);
        let floors: Vec<f64> = c.domains().iter().map(|d| d.entropy_rate_nats()).collect();
        for (d, &h) in floors.iter().enumerate() {
            let k = c.domain(d).alphabet().len() as f64;
            assert!(h > 0.5 && h < ln(k) && h < 3.5, "domain {d}: floor {h}");
        }
        // Harder domains (larger K, larger α) have higher floors.
        assert!(floors.windows(2).all(|w| w[0] < w[1]), "{floors:?}");
        let rounded: Vec<f64> = floors.iter().map(|h| (h * 1e6).round() / 1e6).collect();
        assert_eq!(rounded, PINNED_FLOORS_SEED0, "floors changed: {floors:?}");
    }

    const PINNED_FLOORS_SEED0: [f64; 4] = [1.193817, 1.618813, 2.281371, 2.864326];

    #[test]
    fn empirical_nll_of_long_sample_matches_entropy_rate() {
        let c = default_corpus(0);
        for (d, dom) in c.domains().iter().enumerate() {
            let mut rng = Rng::new(99).fork(d as u64);
            let mut xs = Vec::new();
            let n = 200_000;
            dom.sample_into(&mut rng, n + 1, &mut xs);
            let nll: f64 = xs
                .windows(2)
                .map(|w| dom.nll_nats(w[0], w[1]).unwrap())
                .sum::<f64>()
                / n as f64;
            let h = dom.entropy_rate_nats();
            assert!(
                (nll - h).abs() < 0.02,
                "domain {d}: empirical {nll} vs floor {h}"
            );
        }
    }

    #[test]
    fn first_token_is_stationary() {
        // x_0 ~ π, so the floor holds from the first target on.
        let c = default_corpus(1);
        let dom = c.domain(0);
        let k = dom.alphabet().len();
        let mut counts = vec![0usize; k];
        let n = 40_000;
        let mut out = Vec::new();
        for i in 0..n {
            out.clear();
            dom.sample_into(&mut Rng::new(5).fork(i), 1, &mut out);
            counts[dom.state_of(out[0]).unwrap()] += 1;
        }
        let l1: f64 = counts
            .iter()
            .zip(dom.stationary())
            .map(|(&c, &p)| (c as f64 / n as f64 - p).abs())
            .sum();
        assert!(
            l1 < 0.05,
            "L1 distance of first-token histogram from π: {l1}"
        );
    }
}
