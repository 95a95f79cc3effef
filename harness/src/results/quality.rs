//! Model quality of a run and across a suite's runs, from rounds.csv and steps.csv: the
//! global model beside the mean of the sites' own models, stability, time to a target, and
//! final loss at equal tokens, equal clock and equal payload bytes. Nothing is interpolated
//! or extrapolated: every number is one of the run's evals.
//!
//! Per run, per evaluated round r ([`eval_series`]; rounds.csv has one row per domain d, D
//! domains):
//! - `loss(r)` = (1/D) Σ_d `eval_loss(r, d)`: the **global** model (every expert, as
//!   assembled after the sync, no mask);
//! - `local_loss(r)` = (1/D) Σ_d `local_eval_loss(r, d)`: the mean over sites of each
//!   **site's own model** (its resident experts and its skip policy, before the sync); equal
//!   to `loss(r)` for methods whose sites hold the whole model and agree after a sync;
//! - `tokens(r)` = Σ steps.csv `tokens` over the rows (all sites) with `step ≤ step(r)`;
//! - `clock_s(r)` = the largest `clock_s` of round r's rows (virtual on `sim`);
//! - `payload_bytes(r)` = the largest `payload_bytes_total` of round r's rows (cumulative
//!   training payload of all endpoints up to the eval).
//!
//! **Stability** ([`largest_increase`]): ΔL(r) = L(r) − L(r_prev) between consecutive
//! evaluated rounds; the largest increase is max(0, max_r ΔL(r)) with the round where it
//! happened: 0 (and no round) when the loss never rose, none with fewer than two evals.
//!
//! **Target** (mean global loss ≤ target): [`first_under`] is the first eval at or under the
//! target (the loss may rise above it again later); [`stays_under`] is the first eval from
//! which every later eval of the run stays at or under it (none when the last eval is above).
//!
//! **Equal budgets across runs** ([`common_budget`], [`at_budget`]), for each axis x ∈
//! {tokens, clock_s, payload_bytes}: the compared runs are the complete runs with at least one
//! eval; a run's final budget is x at its last eval; the common budget B is the smallest final
//! budget among the compared runs whose final budget is positive (a run that sent no payload
//! is within every byte budget, and must not shrink it to 0). Each compared run is then
//! reported at its **last eval with x ≤ B** (its loss, local loss and round there); a run
//! with no eval within B (e.g. DDP, whose first eval already sent more bytes than another
//! run's whole training) has no value there. The run that sets B is reported at its final eval.

use serde::Serialize;

use crate::telemetry::{RoundRow, StepRow};

/// One evaluated round of one run (means over domains).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalPoint {
    pub round: usize,
    pub step: usize,
    pub tokens: u64,
    pub clock_s: f64,
    pub payload_bytes: u64,
    /// Global model's eval loss, mean over domains.
    pub loss: f64,
    /// Mean over sites of the sites' own models' eval loss, mean over domains.
    pub local_loss: f64,
}

/// The axis of an equal-budget comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    Tokens,
    Clock,
    Payload,
}

impl Budget {
    pub const ALL: [Budget; 3] = [Budget::Tokens, Budget::Clock, Budget::Payload];

    /// This axis's value at an eval.
    pub fn of(self, p: &EvalPoint) -> f64 {
        match self {
            Budget::Tokens => p.tokens as f64,
            Budget::Clock => p.clock_s,
            Budget::Payload => p.payload_bytes as f64,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Budget::Tokens => "tokens",
            Budget::Clock => "clock",
            Budget::Payload => "payload",
        }
    }
}

/// Per-round means of a run's rounds.csv rows, with the tokens trained up to each eval.
pub fn eval_series(rounds: &[RoundRow], steps: &[StepRow]) -> Vec<EvalPoint> {
    let mut tokens_at: std::collections::BTreeMap<usize, u64> = Default::default();
    for s in steps {
        *tokens_at.entry(s.step).or_insert(0) += s.tokens as u64;
    }
    let mut acc = 0u64;
    for v in tokens_at.values_mut() {
        acc += *v;
        *v = acc;
    }
    let tokens_upto = |step: usize| tokens_at.range(..=step).next_back().map_or(0, |(_, &t)| t);
    let mut by_round: std::collections::BTreeMap<usize, Vec<&RoundRow>> = Default::default();
    for r in rounds {
        by_round.entry(r.round).or_default().push(r);
    }
    by_round
        .iter()
        .map(|(&round, rs)| {
            let n = rs.len() as f64;
            let step = rs.iter().map(|r| r.step).max().unwrap_or(0);
            EvalPoint {
                round,
                step,
                tokens: tokens_upto(step),
                clock_s: rs
                    .iter()
                    .map(|r| r.clock_s)
                    .fold(f64::NEG_INFINITY, f64::max),
                payload_bytes: rs.iter().map(|r| r.payload_bytes_total).max().unwrap_or(0),
                loss: rs.iter().map(|r| r.eval_loss).sum::<f64>() / n,
                local_loss: rs.iter().map(|r| r.local_eval_loss).sum::<f64>() / n,
            }
        })
        .collect()
}

/// The largest round-to-round increase of `loss_of` over the series: (increase, round at
/// whose eval it happened). `Some((0.0, None))` when it never rose; none with < 2 evals.
pub fn largest_increase(
    series: &[EvalPoint],
    loss_of: impl Fn(&EvalPoint) -> f64,
) -> Option<(f64, Option<usize>)> {
    if series.len() < 2 {
        return None;
    }
    let mut best = (0.0, None);
    for w in series.windows(2) {
        let d = loss_of(&w[1]) - loss_of(&w[0]);
        if d > best.0 {
            best = (d, Some(w[1].round));
        }
    }
    Some(best)
}

/// The first eval whose global loss is ≤ `target`.
pub fn first_under(series: &[EvalPoint], target: f64) -> Option<&EvalPoint> {
    series.iter().find(|p| p.loss <= target)
}

/// The first eval from which the global loss stays ≤ `target` at every later eval.
pub fn stays_under(series: &[EvalPoint], target: f64) -> Option<&EvalPoint> {
    let above = series.iter().rposition(|p| p.loss > target);
    let from = above.map_or(0, |i| i + 1);
    series.get(from)
}

/// The common budget on `axis` over runs' series (see the module doc): the smallest
/// positive final budget; none when no series has one.
pub fn common_budget<'a>(
    series: impl IntoIterator<Item = &'a [EvalPoint]>,
    axis: Budget,
) -> Option<f64> {
    series
        .into_iter()
        .filter_map(|s| s.last())
        .map(|p| axis.of(p))
        .filter(|&x| x > 0.0)
        .reduce(f64::min)
}

/// The run's last eval with `axis ≤ budget`.
pub fn at_budget(series: &[EvalPoint], axis: Budget, budget: f64) -> Option<&EvalPoint> {
    series.iter().rev().find(|p| axis.of(p) <= budget)
}

/// Indices of the points not dominated by another: no other point has both coordinates ≤
/// and one <. Both coordinates are minimised (payload bytes, final loss).
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    (0..points.len())
        .filter(|&i| {
            let (xi, yi) = points[i];
            !points
                .iter()
                .any(|&(x, y)| x <= xi && y <= yi && (x < xi || y < yi))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(round: usize, tokens: u64, clock_s: f64, payload: u64, loss: f64) -> EvalPoint {
        EvalPoint {
            round,
            step: round * 10,
            tokens,
            clock_s,
            payload_bytes: payload,
            loss,
            local_loss: loss + 0.5,
        }
    }

    #[test]
    fn series_means_domains_and_counts_tokens_up_to_the_eval() {
        let rounds: Vec<RoundRow> = [(0, 10, 3.0, 4.0, 100), (0, 10, 2.0, 3.0, 90)]
            .into_iter()
            .chain([(1, 20, 1.0, 1.5, 200), (1, 20, 2.0, 2.5, 210)])
            .map(|(round, step, g, l, bytes)| RoundRow {
                round,
                step,
                eval_loss: g,
                local_eval_loss: l,
                payload_bytes_total: bytes,
                clock_s: step as f64 / 10.0,
                ..Default::default()
            })
            .collect();
        let steps: Vec<StepRow> = (1..=25)
            .flat_map(|step| {
                (0..2).map(move |site| StepRow {
                    site,
                    step,
                    tokens: 8,
                    ..Default::default()
                })
            })
            .collect();
        let s = eval_series(&rounds, &steps);
        assert_eq!(
            s,
            [
                EvalPoint {
                    round: 0,
                    step: 10,
                    tokens: 160,
                    clock_s: 1.0,
                    payload_bytes: 100,
                    loss: 2.5,
                    local_loss: 3.5
                },
                EvalPoint {
                    round: 1,
                    step: 20,
                    tokens: 320,
                    clock_s: 2.0,
                    payload_bytes: 210,
                    loss: 1.5,
                    local_loss: 2.0
                }
            ]
        );
    }

    #[test]
    fn stability_and_targets() {
        let s = [
            p(0, 1, 1.0, 1, 3.0),
            p(1, 2, 2.0, 2, 2.0),
            p(2, 3, 3.0, 3, 2.5),
            p(3, 4, 4.0, 4, 1.9),
            p(4, 5, 5.0, 5, 2.2),
            p(5, 6, 6.0, 6, 1.8),
        ];
        let (inc, round) = largest_increase(&s, |p| p.loss).unwrap();
        assert!(
            (inc - 0.5).abs() < 1e-12 && round == Some(2),
            "{inc} {round:?}"
        );
        // Never rising: 0, no round; one eval: none.
        let falling = [p(0, 1, 1.0, 1, 3.0), p(1, 2, 2.0, 2, 2.0)];
        assert_eq!(largest_increase(&falling, |p| p.loss), Some((0.0, None)));
        assert_eq!(largest_increase(&s[..1], |p| p.loss), None);
        // Target 2.0: first reached at round 1, rises above at rounds 2 and 4, stays from 5.
        assert_eq!(first_under(&s, 2.0).map(|p| p.round), Some(1));
        assert_eq!(stays_under(&s, 2.0).map(|p| p.round), Some(5));
        assert_eq!(stays_under(&s, 3.0).map(|p| p.round), Some(0));
        assert_eq!(stays_under(&s, 1.0).map(|p| p.round), None);
        assert_eq!(first_under(&s, 1.0).map(|p| p.round), None);
    }

    #[test]
    fn budgets_take_the_last_eval_within_the_smallest_positive_final_budget() {
        let a = [p(0, 100, 1.0, 50, 3.0), p(1, 200, 2.0, 100, 2.0)];
        let b = [
            p(0, 100, 0.5, 10, 3.5),
            p(1, 200, 1.0, 20, 2.5),
            p(2, 300, 1.5, 30, 2.4),
        ];
        let zero = [p(0, 50, 4.0, 0, 2.9)];
        let runs: Vec<&[EvalPoint]> = vec![&a, &b, &zero];
        assert_eq!(common_budget(runs.clone(), Budget::Tokens), Some(50.0));
        assert_eq!(common_budget(runs.clone(), Budget::Clock), Some(1.5));
        // Zero payload does not shrink the byte budget to 0.
        assert_eq!(common_budget(runs.clone(), Budget::Payload), Some(30.0));
        assert_eq!(at_budget(&a, Budget::Payload, 30.0), None);
        assert_eq!(
            at_budget(&b, Budget::Payload, 30.0).map(|p| p.round),
            Some(2)
        );
        assert_eq!(
            at_budget(&zero, Budget::Payload, 30.0).map(|p| p.round),
            Some(0)
        );
        assert_eq!(at_budget(&a, Budget::Clock, 1.5).map(|p| p.round), Some(0));
        assert_eq!(at_budget(&b, Budget::Clock, 1.5).map(|p| p.round), Some(2));
        assert_eq!(
            common_budget(Vec::<&[EvalPoint]>::new(), Budget::Tokens),
            None
        );
    }

    #[test]
    fn pareto_front_keeps_the_undominated_points() {
        // (bytes, loss): 1 dominates 3 (fewer bytes, lower loss); 0 and 2 trade off; 4 ties 2.
        let pts = [
            (10.0, 2.0),
            (20.0, 1.5),
            (5.0, 2.5),
            (25.0, 1.6),
            (5.0, 2.5),
        ];
        assert_eq!(pareto_front(&pts), [0, 1, 2, 4]);
    }
}
