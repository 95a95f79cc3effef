//! Routing stability and load balance (METHODS.md "Metrics"), as pure functions.
//!
//! Inputs are what a forward pass yields per layer ([`crate::model::moe::LayerRouting`]):
//! top-k expert ids as a row-major `[tokens, k]` slice (`ids[t·k + j]`, column 0 the
//! highest-scoring expert, as `topk(sorted = true)` returns them) and per-expert counts.
//!
//! **Overlap** of two routings A, B of the same T probe tokens:
//! - top-k: (1/T) Σ_t |TopK_A(t) ∩ TopK_B(t)| / k (ids of a row are treated as a set);
//! - top-1: (1/T) Σ_t [A(t, 0) = B(t, 0)].
//!
//! One function serves three metrics: *saturation* (round r vs the final round, OLMoE),
//! *round-to-round overlap* (r vs r − 1) and *cross-site agreement* (each site's local
//! router vs the global router, averaged over sites: [`mean_overlap`]).
//!
//! **Load balance** from E per-expert counts c_i (routed slots) with C = Σ c_i, mean c̄ = C/E:
//! - CV = σ/c̄ with the population σ = sqrt((1/E) Σ (c_i − c̄)²);
//! - MaxVio = max_i c_i / c̄ − 1;
//! - normalised entropy H(p)/ln E with p_i = c_i/C, H(p) = −Σ p_i ln p_i (0·ln 0 = 0);
//! - dead experts: #{i : c_i = 0};
//! - KL(q ‖ uniform) = Σ q_i ln(q_i·E) = ln E − H(q) in nats, q the top-1 histogram.
//!
//! **Skip rate** (FoMoE): share of the T·k routed slots whose expert is not resident.
//!
//! Degenerate cases: identical routings give overlap 1, disjoint ones 0; uniform counts give
//! CV 0, MaxVio 0, entropy 1, KL 0; all slots on one expert give entropy 0, E − 1 dead
//! experts and KL = ln E. With E = 1 the entropy is defined as 1 and KL as 0 (one expert is
//! trivially balanced). Empty inputs (T = 0, C = 0) are errors, not NaN.

/// Why a metric cannot be computed from its inputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    #[error("top-k width k must be at least 1")]
    ZeroK,
    #[error("{what}: {len} ids is not a multiple of k = {k}")]
    Ragged {
        what: &'static str,
        len: usize,
        k: usize,
    },
    #[error("routings differ in length: {a} vs {b} ids")]
    LengthMismatch { a: usize, b: usize },
    #[error("{0}: no tokens")]
    Empty(&'static str),
    #[error("expert id {id} out of range 0..{n_experts}")]
    IdOutOfRange { id: i64, n_experts: usize },
    #[error("count {count} of expert {expert} is negative")]
    NegativeCount { expert: usize, count: i64 },
    #[error("need at least one expert")]
    NoExperts,
    #[error("resident mask has {mask} entries, expected n_experts = {n_experts}")]
    MaskLength { mask: usize, n_experts: usize },
}

/// Agreement of two routings of the same tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overlap {
    /// Mean over tokens of |TopK_a ∩ TopK_b| / k, in [0, 1].
    pub topk: f64,
    /// Share of tokens whose top-1 expert is the same, in [0, 1].
    pub top1: f64,
}

fn check_rows(what: &'static str, ids: &[i64], k: usize) -> Result<usize, MetricError> {
    if k == 0 {
        return Err(MetricError::ZeroK);
    }
    if !ids.len().is_multiple_of(k) {
        return Err(MetricError::Ragged {
            what,
            len: ids.len(),
            k,
        });
    }
    if ids.is_empty() {
        return Err(MetricError::Empty(what));
    }
    Ok(ids.len() / k)
}

/// Overlap of routing `a` with routing `b` (both `[tokens, k]` row-major, same tokens).
/// Saturation: `overlap(round_r, final)`; round-to-round: `overlap(round_r, round_r_minus_1)`.
pub fn overlap(a: &[i64], b: &[i64], k: usize) -> Result<Overlap, MetricError> {
    if a.len() != b.len() {
        return Err(MetricError::LengthMismatch {
            a: a.len(),
            b: b.len(),
        });
    }
    let tokens = check_rows("overlap", a, k)?;
    let mut shared_sum = 0.0;
    let mut top1_same = 0usize;
    for (ra, rb) in a.chunks_exact(k).zip(b.chunks_exact(k)) {
        // Distinct ids of row a that also occur in row b (k is small: quadratic is fine).
        let shared = ra
            .iter()
            .enumerate()
            .filter(|&(j, id)| !ra[..j].contains(id) && rb.contains(id))
            .count();
        shared_sum += shared as f64 / k as f64;
        top1_same += usize::from(ra[0] == rb[0]);
    }
    Ok(Overlap {
        topk: shared_sum / tokens as f64,
        top1: top1_same as f64 / tokens as f64,
    })
}

/// Mean overlap of several routings with one reference: cross-site agreement is
/// `mean_overlap(&[site_0, site_1, …], global, k)`. Each routing counts once, whatever its
/// site; an empty list is an error.
pub fn mean_overlap(
    routings: &[&[i64]],
    reference: &[i64],
    k: usize,
) -> Result<Overlap, MetricError> {
    if routings.is_empty() {
        return Err(MetricError::Empty("mean_overlap: no routings"));
    }
    let mut sum = Overlap {
        topk: 0.0,
        top1: 0.0,
    };
    for r in routings {
        let o = overlap(r, reference, k)?;
        sum.topk += o.topk;
        sum.top1 += o.top1;
    }
    let n = routings.len() as f64;
    Ok(Overlap {
        topk: sum.topk / n,
        top1: sum.top1 / n,
    })
}

fn check_id(id: i64, n_experts: usize) -> Result<usize, MetricError> {
    if id < 0 || id as u64 >= n_experts as u64 {
        return Err(MetricError::IdOutOfRange { id, n_experts });
    }
    Ok(id as usize)
}

/// Routed slots per expert: c_i = #{(t, j) : ids[t·k + j] = i}, length E.
pub fn slot_counts(ids: &[i64], n_experts: usize) -> Result<Vec<i64>, MetricError> {
    if n_experts == 0 {
        return Err(MetricError::NoExperts);
    }
    let mut counts = vec![0i64; n_experts];
    for &id in ids {
        counts[check_id(id, n_experts)?] += 1;
    }
    Ok(counts)
}

/// Top-1 histogram: tokens whose first-choice expert is i, length E.
pub fn top1_counts(ids: &[i64], k: usize, n_experts: usize) -> Result<Vec<i64>, MetricError> {
    check_rows("top1_counts", ids, k)?;
    if n_experts == 0 {
        return Err(MetricError::NoExperts);
    }
    let mut counts = vec![0i64; n_experts];
    for row in ids.chunks_exact(k) {
        counts[check_id(row[0], n_experts)?] += 1;
    }
    Ok(counts)
}

/// Counts as f64 after checking they are non-negative and not all zero; returns (counts, C).
fn checked_counts(counts: &[i64]) -> Result<(Vec<f64>, f64), MetricError> {
    if counts.is_empty() {
        return Err(MetricError::NoExperts);
    }
    let mut total = 0.0;
    let mut out = Vec::with_capacity(counts.len());
    for (expert, &count) in counts.iter().enumerate() {
        if count < 0 {
            return Err(MetricError::NegativeCount { expert, count });
        }
        total += count as f64;
        out.push(count as f64);
    }
    if total == 0.0 {
        return Err(MetricError::Empty("counts"));
    }
    Ok((out, total))
}

/// CV = σ/c̄ (population standard deviation).
pub fn coefficient_of_variation(counts: &[i64]) -> Result<f64, MetricError> {
    let (c, total) = checked_counts(counts)?;
    let e = c.len() as f64;
    let mean = total / e;
    let var = c.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / e;
    Ok(var.sqrt() / mean)
}

/// MaxVio = max_i c_i / c̄ − 1.
pub fn max_violation(counts: &[i64]) -> Result<f64, MetricError> {
    let (c, total) = checked_counts(counts)?;
    let mean = total / c.len() as f64;
    let max = c.iter().copied().fold(0.0, f64::max);
    Ok(max / mean - 1.0)
}

/// H(p) in nats of the distribution p_i = c_i / C (0·ln 0 = 0).
pub fn entropy_nats(counts: &[i64]) -> Result<f64, MetricError> {
    let (c, total) = checked_counts(counts)?;
    Ok(c.iter()
        .filter(|&&x| x > 0.0)
        .map(|&x| -(x / total) * (x / total).ln())
        .sum())
}

/// H(p) / ln E; 1 when E = 1.
pub fn normalized_entropy(counts: &[i64]) -> Result<f64, MetricError> {
    let h = entropy_nats(counts)?;
    let e = counts.len();
    Ok(if e == 1 { 1.0 } else { h / (e as f64).ln() })
}

/// Experts with no routed slot.
pub fn dead_experts(counts: &[i64]) -> usize {
    counts.iter().filter(|&&c| c == 0).count()
}

/// KL(q ‖ uniform) = ln E − H(q) in nats, q the normalised `top1` histogram; 0 when E = 1.
/// Clamped at 0 from below (rounding can make ln E − H a few ulp negative).
pub fn kl_to_uniform(top1: &[i64]) -> Result<f64, MetricError> {
    let h = entropy_nats(top1)?;
    Ok(((top1.len() as f64).ln() - h).max(0.0))
}

/// Share of routed slots whose expert is not resident (`resident[i]`: expert i is held).
pub fn skip_rate(ids: &[i64], resident: &[bool]) -> Result<f64, MetricError> {
    if ids.is_empty() {
        return Err(MetricError::Empty("skip_rate"));
    }
    let mut skipped = 0usize;
    for &id in ids {
        if !resident[check_id(id, resident.len())?] {
            skipped += 1;
        }
    }
    Ok(skipped as f64 / ids.len() as f64)
}

/// The load-balance metrics of one layer, from slot counts and the top-1 histogram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadMetrics {
    pub cv: f64,
    pub max_vio: f64,
    pub norm_entropy: f64,
    pub dead_experts: usize,
    pub kl_uniform: f64,
}

impl LoadMetrics {
    /// From routed-slot counts (CV, MaxVio, entropy, dead) and the top-1 histogram (KL).
    pub fn from_counts(slot_counts: &[i64], top1_counts: &[i64]) -> Result<Self, MetricError> {
        if slot_counts.len() != top1_counts.len() {
            return Err(MetricError::MaskLength {
                mask: top1_counts.len(),
                n_experts: slot_counts.len(),
            });
        }
        Ok(LoadMetrics {
            cv: coefficient_of_variation(slot_counts)?,
            max_vio: max_violation(slot_counts)?,
            norm_entropy: normalized_entropy(slot_counts)?,
            dead_experts: dead_experts(slot_counts),
            kl_uniform: kl_to_uniform(top1_counts)?,
        })
    }

    /// From a `[tokens, k]` routing over E experts.
    pub fn from_topk(ids: &[i64], k: usize, n_experts: usize) -> Result<Self, MetricError> {
        let top1 = top1_counts(ids, k, n_experts)?;
        Self::from_counts(&slot_counts(ids, n_experts)?, &top1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn identical_routings_saturate_at_one() {
        let a = [0, 1, 2, 3, 4, 5, 6, 7];
        assert_eq!(
            overlap(&a, &a, 2).unwrap(),
            Overlap {
                topk: 1.0,
                top1: 1.0
            }
        );
        // Same sets in another order: top-k still 1, top-1 differs on every token.
        let b = [1, 0, 3, 2, 5, 4, 7, 6];
        assert_eq!(
            overlap(&a, &b, 2).unwrap(),
            Overlap {
                topk: 1.0,
                top1: 0.0
            }
        );
    }

    #[test]
    fn disjoint_routings_overlap_zero() {
        let a = [0, 1, 0, 1, 2, 3];
        let b = [2, 3, 4, 5, 0, 1];
        assert_eq!(
            overlap(&a, &b, 2).unwrap(),
            Overlap {
                topk: 0.0,
                top1: 0.0
            }
        );
    }

    #[test]
    fn partial_overlap_by_hand() {
        // k = 3, 4 tokens:
        // t0 {0,1,2} vs {0,1,2}: 3/3, top-1 same
        // t1 {3,4,5} vs {5,6,7}: 1/3, top-1 3≠5
        // t2 {0,2,4} vs {2,0,7}: 2/3, top-1 0≠2
        // t3 {1,6,7} vs {1,3,5}: 1/3, top-1 same
        // top-k = (1 + 1/3 + 2/3 + 1/3)/4 = (7/3)/4 = 7/12; top-1 = 2/4.
        let a = [0, 1, 2, 3, 4, 5, 0, 2, 4, 1, 6, 7];
        let b = [0, 1, 2, 5, 6, 7, 2, 0, 7, 1, 3, 5];
        let o = overlap(&a, &b, 3).unwrap();
        close(o.topk, 7.0 / 12.0);
        close(o.top1, 0.5);
        // Symmetric for sets of equal size.
        close(overlap(&b, &a, 3).unwrap().topk, 7.0 / 12.0);
    }

    #[test]
    fn cross_site_agreement_averages_sites() {
        let global = [0, 1, 2, 3];
        let same = [0, 1, 2, 3];
        let half = [0, 5, 6, 7]; // t0 1/2 with top-1 same, t1 0
        let o = mean_overlap(&[&same, &half], &global, 2).unwrap();
        close(o.topk, (1.0 + 0.25) / 2.0);
        close(o.top1, (1.0 + 0.5) / 2.0);
        assert!(mean_overlap(&[], &global, 2).is_err());
    }

    #[test]
    fn uniform_counts_are_perfectly_balanced() {
        let counts = [5i64; 8];
        close(coefficient_of_variation(&counts).unwrap(), 0.0);
        close(max_violation(&counts).unwrap(), 0.0);
        close(normalized_entropy(&counts).unwrap(), 1.0);
        close(kl_to_uniform(&counts).unwrap(), 0.0);
        assert_eq!(dead_experts(&counts), 0);
    }

    #[test]
    fn all_to_one_expert() {
        let e = 8;
        let mut counts = vec![0i64; e];
        counts[3] = 40;
        close(normalized_entropy(&counts).unwrap(), 0.0);
        assert_eq!(dead_experts(&counts), e - 1);
        close(kl_to_uniform(&counts).unwrap(), (e as f64).ln());
        // c̄ = 5: MaxVio = 40/5 − 1 = 7; σ² = (35² + 7·5²)/8 = 1400/8 = 175, CV = √175/5.
        close(max_violation(&counts).unwrap(), 7.0);
        close(
            coefficient_of_variation(&counts).unwrap(),
            175f64.sqrt() / 5.0,
        );
    }

    #[test]
    fn load_metrics_by_hand() {
        // counts [1, 3]: c̄ = 2, σ = 1, CV = 0.5, MaxVio = 0.5,
        // H = −(¼ ln ¼ + ¾ ln ¾), normalised by ln 2.
        let c = [1i64, 3];
        close(coefficient_of_variation(&c).unwrap(), 0.5);
        close(max_violation(&c).unwrap(), 0.5);
        let h = -(0.25f64 * 0.25f64.ln() + 0.75 * 0.75f64.ln());
        close(normalized_entropy(&c).unwrap(), h / 2f64.ln());
        close(kl_to_uniform(&c).unwrap(), 2f64.ln() - h);
        // One expert: balanced by definition.
        close(normalized_entropy(&[7]).unwrap(), 1.0);
        close(kl_to_uniform(&[7]).unwrap(), 0.0);
    }

    #[test]
    fn counts_and_histograms_from_ids() {
        // 3 tokens, k = 2, E = 4.
        let ids = [0, 1, 1, 2, 1, 0];
        assert_eq!(slot_counts(&ids, 4).unwrap(), vec![2, 3, 1, 0]);
        assert_eq!(top1_counts(&ids, 2, 4).unwrap(), vec![1, 2, 0, 0]);
        let m = LoadMetrics::from_topk(&ids, 2, 4).unwrap();
        assert_eq!(m.dead_experts, 1);
        close(m.max_vio, 3.0 / 1.5 - 1.0);
        // Resident {0, 2}: slots on 1 (three of them) are skipped: 3/6.
        close(skip_rate(&ids, &[true, false, true, false]).unwrap(), 0.5);
        close(skip_rate(&ids, &[true; 4]).unwrap(), 0.0);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert_eq!(
            overlap(&[0, 1, 2], &[0, 1, 2], 2),
            Err(MetricError::Ragged {
                what: "overlap",
                len: 3,
                k: 2
            })
        );
        assert_eq!(
            overlap(&[0, 1], &[0, 1, 2, 3], 2),
            Err(MetricError::LengthMismatch { a: 2, b: 4 })
        );
        assert_eq!(overlap(&[], &[], 2), Err(MetricError::Empty("overlap")));
        assert_eq!(overlap(&[0], &[0], 0), Err(MetricError::ZeroK));
        assert_eq!(
            slot_counts(&[0, 9], 4),
            Err(MetricError::IdOutOfRange {
                id: 9,
                n_experts: 4
            })
        );
        assert_eq!(
            coefficient_of_variation(&[0, 0]),
            Err(MetricError::Empty("counts"))
        );
        assert_eq!(
            max_violation(&[1, -1]),
            Err(MetricError::NegativeCount {
                expert: 1,
                count: -1
            })
        );
        assert_eq!(
            skip_rate(&[5], &[true]),
            Err(MetricError::IdOutOfRange {
                id: 5,
                n_experts: 1
            })
        );
    }
}
