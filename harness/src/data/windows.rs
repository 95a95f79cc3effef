//! Windows over a file-backed token array split into a training head and a held-out tail
//! (shared by `textdir` and `tokenfile`).
//!
//! A sequence is a window of `seq_len + 1` consecutive tokens.
//! - Training: start uniform in [0, train_len − seq_len − 1], drawn with the row's seeded
//!   generator; windows never reach into the held-out part.
//! - Eval: `count = min(eval_sequences, ⌊eval_len / (seq_len + 1)⌋)` windows, evenly spaced
//!   over the held-out part (start_i = ⌊i·(eval_len − seq_len − 1)/(count − 1)⌋), so they
//!   never overlap and need no generator.
//! - Probe: seeded random windows inside the held-out part.

use crate::rng::Rng;

use super::error::DataError;

/// Token storage: bytes (textdir) or uint16 ids (tokenfile).
#[derive(Clone, Debug)]
pub(crate) enum Tokens {
    Bytes(Vec<u8>),
    U16(Vec<u16>),
}

impl Tokens {
    pub(crate) fn len(&self) -> usize {
        match self {
            Tokens::Bytes(v) => v.len(),
            Tokens::U16(v) => v.len(),
        }
    }

    fn push(&self, start: usize, len: usize, out: &mut Vec<i64>) {
        match self {
            Tokens::Bytes(v) => out.extend(v[start..start + len].iter().map(|&b| b as i64)),
            Tokens::U16(v) => out.extend(v[start..start + len].iter().map(|&t| t as i64)),
        }
    }
}

/// One domain's tokens: `[0, train_len)` for training, `[train_len, len)` held out.
#[derive(Clone, Debug)]
pub(crate) struct SplitTokens {
    tokens: Tokens,
    train_len: usize,
}

/// The train length when a tail fraction `eval_fraction` of `n` tokens is held out:
/// n − round(n·eval_fraction).
pub(crate) fn train_len_for(n: usize, eval_fraction: f64) -> usize {
    let eval = ((n as f64) * eval_fraction).round() as usize;
    n - eval.min(n)
}

impl SplitTokens {
    /// Splits at `train_len`; both parts must hold at least `seq_len + 1` tokens
    /// (`what` describes the domain in the error, `field` names the config field).
    pub(crate) fn new(
        tokens: Tokens,
        train_len: usize,
        seq_len: usize,
        field: &'static str,
        what: &str,
    ) -> Result<SplitTokens, DataError> {
        let need = seq_len + 1;
        let eval_len = tokens.len() - train_len;
        if train_len < need || eval_len < need {
            return Err(DataError::invalid(
                field,
                format!(
                    "{what}: {train_len} training and {eval_len} held-out tokens; each part needs at least \
                     seq_len + 1 = {need} (a longer input, a different data.eval_fraction, or a shorter seq_len)"
                ),
            ));
        }
        Ok(SplitTokens { tokens, train_len })
    }

    pub(crate) fn train_len(&self) -> usize {
        self.train_len
    }

    pub(crate) fn eval_len(&self) -> usize {
        self.tokens.len() - self.train_len
    }

    /// Appends a random training window of `len` tokens.
    pub(crate) fn train_window(&self, rng: &mut Rng, len: usize, out: &mut Vec<i64>) {
        let start = rng.below((self.train_len - len + 1) as u64) as usize;
        self.tokens.push(start, len, out);
    }

    /// How many non-overlapping eval windows of `len` tokens are used (≤ `max`, ≥ 1).
    pub(crate) fn eval_count(&self, len: usize, max: usize) -> usize {
        (self.eval_len() / len).min(max).max(1)
    }

    /// Appends eval window `i` of `count` (evenly spaced, non-overlapping).
    pub(crate) fn eval_window(&self, i: usize, count: usize, len: usize, out: &mut Vec<i64>) {
        let span = self.eval_len() - len;
        let offset = if count > 1 {
            (i as u128 * span as u128 / (count - 1) as u128) as usize
        } else {
            0
        };
        self.tokens.push(self.train_len + offset, len, out);
    }

    /// Appends a seeded random window of the held-out part.
    pub(crate) fn probe_window(&self, rng: &mut Rng, len: usize, out: &mut Vec<i64>) {
        let start = rng.below((self.eval_len() - len + 1) as u64) as usize;
        self.tokens.push(self.train_len + start, len, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_stay_in_their_part_and_eval_windows_do_not_overlap() {
        let toks: Vec<u16> = (0..100).collect();
        let s = SplitTokens::new(Tokens::U16(toks), 80, 4, "path", "test").unwrap();
        let mut rng = Rng::new(0);
        for _ in 0..500 {
            let mut out = Vec::new();
            s.train_window(&mut rng, 5, &mut out);
            assert!(out[4] < 80 && out.windows(2).all(|w| w[1] == w[0] + 1));
            out.clear();
            s.probe_window(&mut rng, 5, &mut out);
            assert!(out[0] >= 80 && out[4] < 100);
        }
        let count = s.eval_count(5, 1000);
        assert_eq!(count, 4);
        let starts: Vec<i64> = (0..count)
            .map(|i| {
                let mut out = Vec::new();
                s.eval_window(i, count, 5, &mut out);
                out[0]
            })
            .collect();
        assert_eq!(starts, vec![80, 85, 90, 95]);
        assert_eq!(train_len_for(100, 0.1), 90);
        assert_eq!(train_len_for(7, 0.1), 6);
        let e =
            SplitTokens::new(Tokens::Bytes(vec![0; 10]), 8, 4, "path", "domain 'x'").unwrap_err();
        assert_eq!(
            e.to_string(),
            "data.path: domain 'x': 8 training and 2 held-out tokens; each part needs at least seq_len + 1 = 5 \
             (a longer input, a different data.eval_fraction, or a shorter seq_len)"
        );
    }
}
