//! A small deterministic random number generator, bit-identical for a seed on every machine.
//!
//! Generator: **xoshiro256\*\*** (Blackman & Vigna), state seeded from a 64-bit key by
//! **SplitMix64**. Every sampler here is built from integer operations and the IEEE-754
//! basic operations (`+ − × ÷ √`, which are correctly rounded everywhere); the logarithm and
//! exponential are the portable [`ln`] and [`exp`] of this module rather than the platform
//! libm (whose last bit may differ between systems), so a seed gives the same bits on any
//! machine, compiler and operating system.
//!
//! Streams. [`Rng::fork`]`(stream_id)` derives an independent generator from this one's *key*
//! (not from its current position): `fork` gives the same child however many numbers the
//! parent has drawn, so streams can be addressed by coordinates, e.g.
//! `Rng::new(seed).fork(TRAIN).fork(site).fork(step).fork(row)`, and stay independent of
//! how many draws any other stream made. `a.fork(x).fork(y)` and `a.fork(y).fork(x)` differ.
//!
//! Samplers: uniform `u64`, uniform `f64` in [0, 1) (53 random bits), an unbiased integer in
//! [0, n), categorical over unnormalised weights, standard normal (Marsaglia polar method),
//! gamma (Marsaglia–Tsang; shape < 1 through Gamma(a) = Gamma(a+1)·U^{1/a}, done in log
//! space) and Dirichlet (normalised gammas, in log space so that tiny concentrations
//! α ≪ 1 never give 0/0).

/// SplitMix64 increment (the golden ratio in 64-bit fixed point).
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function: a bijective 64-bit mixer.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One SplitMix64 step: advances `state` and returns the next output. The one SplitMix64 of
/// the harness: the relay's and the sim's jitter streams and the tests' data use it too.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GOLDEN);
    mix64(*state)
}

/// A seeded xoshiro256** generator with addressable child streams (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
    key: u64,
}

impl Rng {
    /// The generator for `seed`: the state is the first four SplitMix64 outputs from `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut sm = seed;
        let mut s = [0u64; 4];
        for word in &mut s {
            *word = splitmix64(&mut sm);
        }
        if s == [0; 4] {
            // The all-zero state is the one fixed point of xoshiro; SplitMix64 never emits
            // four zeros in a row, but keep the guarantee local.
            s[0] = GOLDEN;
        }
        Rng { s, key: seed }
    }

    /// The key this generator was created from (its seed, or the derived key of a fork).
    pub fn key(&self) -> u64 {
        self.key
    }

    /// An independent child stream, a function of this generator's key and `stream_id`
    /// only (not of how many numbers were drawn).
    pub fn fork(&self, stream_id: u64) -> Rng {
        let child = mix64(self.key.rotate_left(17) ^ mix64(stream_id ^ 0xD1B5_4A32_D192_ED03));
        Rng::new(child.wrapping_add(GOLDEN))
    }

    /// The next 64 uniformly random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1), a multiple of 2⁻⁵³.
    pub fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in (0, 1]: never 0, so its logarithm is finite.
    pub fn uniform_open0(&mut self) -> f64 {
        1.0 - self.uniform_f64()
    }

    /// Uniform integer in [0, n), unbiased (Lemire's multiply-and-reject). `n = 0` gives 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        let threshold = n.wrapping_neg() % n; // 2^64 mod n
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// An index drawn with probability proportional to `weights` (non-negative, finite,
    /// not all zero). Entries of weight 0 are never drawn. Degenerate input (empty, all zero,
    /// negative or non-finite weights) returns the last index with positive weight, or 0;
    /// callers validate their weights beforehand.
    pub fn categorical(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let u = self.uniform_f64() * total;
        let mut acc = 0.0;
        let mut last_positive = 0;
        for (i, &w) in weights.iter().enumerate() {
            if w > 0.0 {
                acc += w;
                last_positive = i;
                if u < acc {
                    return i;
                }
            }
        }
        last_positive
    }

    /// Standard normal N(0, 1), Marsaglia's polar method (uses one pair per accepted draw).
    pub fn normal(&mut self) -> f64 {
        loop {
            let u = 2.0 * self.uniform_f64() - 1.0;
            let v = 2.0 * self.uniform_f64() - 1.0;
            let s = u * u + v * v;
            if s > 0.0 && s < 1.0 {
                return u * (-2.0 * ln(s) / s).sqrt();
            }
        }
    }

    /// ln of a Gamma(shape, 1) draw; `shape` > 0 and finite (otherwise NaN).
    /// For shape < 1: ln G(a) = ln G(a+1) + ln(U)/a, which stays finite where G(a) itself
    /// would underflow to 0.
    pub fn ln_gamma_sample(&mut self, shape: f64) -> f64 {
        if !(shape > 0.0 && shape.is_finite()) {
            return f64::NAN;
        }
        if shape < 1.0 {
            let g = self.ln_gamma_sample(shape + 1.0);
            return g + ln(self.uniform_open0()) / shape;
        }
        // Marsaglia & Tsang (2000), shape >= 1.
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let t = 1.0 + c * x;
            if t <= 0.0 {
                continue;
            }
            let v = t * t * t;
            let u = self.uniform_open0();
            let x2 = x * x;
            if u < 1.0 - 0.0331 * x2 * x2 || ln(u) < 0.5 * x2 + d * (1.0 - v + ln(v)) {
                return ln(d) + ln(v);
            }
        }
    }

    /// A Gamma(shape, 1) draw (may underflow to 0 for shape ≪ 1; see [`Rng::ln_gamma_sample`]).
    pub fn gamma(&mut self, shape: f64) -> f64 {
        exp(self.ln_gamma_sample(shape))
    }

    /// A Dirichlet(alpha) draw: non-negative, sums to 1 (up to rounding). Every α_i must be
    /// positive and finite (otherwise the result holds NaN). Computed as softmax of
    /// log-gamma draws, so α_i ≪ 1 gives sparse but valid vectors. Empty `alpha` gives `[]`.
    pub fn dirichlet(&mut self, alpha: &[f64]) -> Vec<f64> {
        let logs: Vec<f64> = alpha.iter().map(|&a| self.ln_gamma_sample(a)).collect();
        let max = logs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let mut w: Vec<f64> = logs.iter().map(|&l| exp(l - max)).collect();
        let total: f64 = w.iter().sum();
        for x in &mut w {
            *x /= total;
        }
        w
    }
}

// ---------------------------------------------------------------------------------------------
// Portable ln / exp from basic IEEE operations only (no libm, no fused multiply-add), so the
// samplers above give the same bits everywhere. Accuracy: a few ulp (tests: relative error
// below 1e-14 against the platform libm).

/// Upper 32 bits of ln 2 (fdlibm's ln2_hi), so k·LN2_HI is exact for |k| < 2^21.
const LN2_HI: f64 = f64::from_bits(0x3FE6_2E42_FEE0_0000);
/// ln 2 − LN2_HI (fdlibm's ln2_lo).
const LN2_LO: f64 = f64::from_bits(0x3DEA_39EF_3579_3C76);
const SQRT_HALF: f64 = std::f64::consts::FRAC_1_SQRT_2;

/// Natural logarithm, portable (see above). ln(0) = −∞, ln(x < 0) = NaN, ln(+∞) = +∞.
pub fn ln(x: f64) -> f64 {
    if x.is_nan() || x < 0.0 {
        return f64::NAN;
    }
    if x == 0.0 {
        return f64::NEG_INFINITY;
    }
    if x.is_infinite() {
        return f64::INFINITY;
    }
    let mut bits = x.to_bits();
    let mut e: i64 = 0;
    if (bits >> 52) == 0 {
        // Subnormal: scale up by 2^54 first.
        bits = (x * (1u64 << 54) as f64).to_bits();
        e -= 54;
    }
    e += ((bits >> 52) & 0x7ff) as i64 - 1023;
    // Mantissa m in [1, 2).
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > 2.0 * SQRT_HALF {
        m *= 0.5;
        e += 1;
    }
    // m in [√½, √2): ln m = 2·atanh(t), t = (m − 1)/(m + 1), |t| ≤ 0.1716.
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    // Σ_{n≥0} t^{2n}/(2n+1), terms up to t^{28}: below 1e-21 relative.
    let mut series = 1.0 / 29.0;
    let mut n = 27.0;
    while n >= 1.0 {
        series = 1.0 / n + t2 * series;
        n -= 2.0;
    }
    let ln_m = 2.0 * t * series;
    let ef = e as f64;
    ef * LN2_HI + (ef * LN2_LO + ln_m)
}

/// Exponential, portable (see above). Overflows to +∞ above ~709.78, underflows to 0
/// below ~−745.13; exp(NaN) = NaN.
pub fn exp(x: f64) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x > 709.782_712_893_384 {
        return f64::INFINITY;
    }
    if x < -745.133_219_101_941_1 {
        return 0.0;
    }
    // x = k·ln2 + r, |r| ≤ ln2/2.
    let kf = (x * std::f64::consts::LOG2_E).round();
    let r = (x - kf * LN2_HI) - kf * LN2_LO;
    // Taylor series of e^r to r^18/18!: truncation below 1e-19 relative for |r| ≤ 0.347.
    let mut p = 1.0;
    let mut n = 18.0;
    while n >= 1.0 {
        p = 1.0 + p * r / n;
        n -= 1.0;
    }
    scale_by_pow2(p, kf as i64)
}

/// p · 2^k for p in [0.7, 1.5], handling results that are subnormal or near overflow.
fn scale_by_pow2(p: f64, k: i64) -> f64 {
    fn pow2(k: i64) -> f64 {
        // 2^k for -1022 <= k <= 1023.
        f64::from_bits(((k + 1023) as u64) << 52)
    }
    if k > 1023 {
        p * pow2(1023) * pow2(k - 1023)
    } else if k < -1022 {
        // k >= -1076 here (exp underflows to 0 before): the first product is exact and
        // normal, the second rounds once into the subnormal range.
        p * pow2(k + 54) * pow2(-54)
    } else {
        p * pow2(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_reference_vector() {
        // Published SplitMix64 outputs for seed 0.
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(&mut s), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(splitmix64(&mut s), 0x06C4_5D18_8009_454F);
    }

    #[test]
    fn xoshiro256starstar_matches_reference_vector() {
        // Reference implementation with state {1, 2, 3, 4}.
        let mut r = Rng {
            s: [1, 2, 3, 4],
            key: 0,
        };
        let got: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        assert_eq!(got, vec![11520, 0, 1509978240, 1215971899390074240]);
    }

    #[test]
    fn same_seed_same_stream_different_seed_different() {
        let a: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..8).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..8).map(|_| r.next_u64()).collect()
        };
        let c: Vec<u64> = {
            let mut r = Rng::new(43);
            (0..8).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn fork_is_independent_of_draws_and_order_sensitive() {
        let mut parent = Rng::new(7);
        let before = parent.fork(3);
        for _ in 0..100 {
            parent.next_u64();
        }
        assert_eq!(parent.fork(3), before);
        assert_ne!(parent.fork(3), parent.fork(4));
        assert_ne!(parent.fork(1).fork(2), parent.fork(2).fork(1));
        assert_ne!(parent.fork(0), Rng::new(7));
        // Fork of different parents with the same stream id differ.
        assert_ne!(Rng::new(1).fork(0), Rng::new(2).fork(0));
    }

    #[test]
    fn portable_ln_exp_match_libm() {
        let mut r = Rng::new(1);
        let mut worst_ln: f64 = 0.0;
        let mut worst_exp: f64 = 0.0;
        for i in 0..20000 {
            // Log-uniform over a wide range, plus values near 1.
            let x = if i % 2 == 0 {
                (r.uniform_f64() * 1400.0 - 700.0).exp()
            } else {
                1.0 + (r.uniform_f64() - 0.5) * 1e-3
            };
            let (a, b) = (ln(x), x.ln());
            let err = if b.abs() > 1e-300 {
                ((a - b) / b).abs()
            } else {
                (a - b).abs()
            };
            worst_ln = worst_ln.max(err);
            let y = r.uniform_f64() * 1400.0 - 700.0;
            let (a, b) = (exp(y), y.exp());
            worst_exp = worst_exp.max(((a - b) / b).abs());
        }
        assert!(worst_ln < 1e-14, "ln relative error {worst_ln:e}");
        assert!(worst_exp < 1e-14, "exp relative error {worst_exp:e}");
        assert_eq!(ln(1.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(ln(0.0), f64::NEG_INFINITY);
        assert!(ln(-1.0).is_nan());
        assert_eq!(exp(-800.0), 0.0);
        assert_eq!(exp(800.0), f64::INFINITY);
        // Subnormal input and output.
        let tiny = f64::from_bits(1); // 2^-1074
        assert!((ln(tiny) - (-1074.0 * std::f64::consts::LN_2)).abs() < 1e-12);
        assert!((exp(-740.0) / (-740.0f64).exp() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn uniform_below_and_categorical_have_the_right_frequencies() {
        let mut r = Rng::new(5);
        let n = 200_000;
        let mean: f64 = (0..n).map(|_| r.uniform_f64()).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[r.below(3) as usize] += 1;
        }
        for c in counts {
            assert!((c as f64 / n as f64 - 1.0 / 3.0).abs() < 0.01, "{counts:?}");
        }
        let w = [0.0, 1.0, 3.0, 0.0];
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[r.categorical(&w)] += 1;
        }
        assert_eq!(counts[0], 0);
        assert_eq!(counts[3], 0);
        assert!(
            (counts[2] as f64 / n as f64 - 0.75).abs() < 0.01,
            "{counts:?}"
        );
    }

    #[test]
    fn normal_gamma_dirichlet_moments() {
        let mut r = Rng::new(9);
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.02,
            "normal {mean} {var}"
        );
        for shape in [0.1, 0.5, 1.0, 3.5] {
            let m = (0..n).map(|_| r.gamma(shape)).sum::<f64>() / n as f64;
            assert!(
                (m - shape).abs() < 0.03 * shape.max(1.0),
                "gamma({shape}) mean {m}"
            );
        }
        let alpha = [0.2, 0.2, 0.6];
        let mut acc = [0.0; 3];
        let trials = 20_000;
        for _ in 0..trials {
            let d = r.dirichlet(&alpha);
            let s: f64 = d.iter().sum();
            assert!((s - 1.0).abs() < 1e-12 && d.iter().all(|&x| x >= 0.0));
            for (a, x) in acc.iter_mut().zip(&d) {
                *a += x / trials as f64;
            }
        }
        // E[x_i] = α_i / Σα.
        assert!(
            (acc[0] - 0.2).abs() < 0.01 && (acc[2] - 0.6).abs() < 0.01,
            "{acc:?}"
        );
        // Tiny concentrations still give a valid vector.
        let d = r.dirichlet(&[1e-3; 8]);
        assert!((d.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(d.iter().all(|x| x.is_finite()));
    }

    #[test]
    fn pinned_outputs_for_seed_zero() {
        // Pins the whole pipeline (seeding, fork, samplers) so a change is noticed: these
        // values must be the same on every machine.
        let mut r = Rng::new(0).fork(1);
        let u = r.next_u64();
        let f = r.uniform_f64();
        let g = r.ln_gamma_sample(0.3);
        let pinned = (u, f.to_bits(), g.to_bits());
        assert_eq!(pinned, PINNED_SEED0);
    }

    const PINNED_SEED0: (u64, u64, u64) = (
        14724035601545602957,
        4601956761673574900,
        13838252986416505051,
    );
}
