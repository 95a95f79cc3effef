//! A training or evaluation batch: token ids, row-major `[batch_size, seq_len]`, as plain
//! `Vec<i64>` so this module needs no tensor library (the model converts with
//! `Tensor::from_slice(&batch.inputs).view(batch.shape())`).
//!
//! Every row is one sequence x_0 … x_T (T = `seq_len`) of a single domain:
//! `inputs` row = x_0 … x_{T−1}, `targets` row = x_1 … x_T (targets are inputs shifted by one).

use super::error::DataError;

/// A batch of `batch_size` rows of `seq_len` tokens each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Rows.
    pub batch_size: usize,
    /// Tokens per row.
    pub seq_len: usize,
    /// Input token ids, row-major, `batch_size * seq_len` entries.
    pub inputs: Vec<i64>,
    /// Target token ids (inputs shifted left by one), same layout.
    pub targets: Vec<i64>,
    /// The domain index of each row, `batch_size` entries.
    pub domains: Vec<usize>,
}

impl Batch {
    /// An empty batch of rows of `seq_len` tokens.
    pub(crate) fn with_capacity(seq_len: usize, rows: usize) -> Batch {
        Batch {
            batch_size: 0,
            seq_len,
            inputs: Vec::with_capacity(rows * seq_len),
            targets: Vec::with_capacity(rows * seq_len),
            domains: Vec::with_capacity(rows),
        }
    }

    /// Appends one sequence of `seq_len + 1` tokens of domain `domain`.
    pub(crate) fn push_sequence(&mut self, domain: usize, tokens: &[i64]) {
        debug_assert_eq!(tokens.len(), self.seq_len + 1);
        self.inputs.extend_from_slice(&tokens[..self.seq_len]);
        self.targets.extend_from_slice(&tokens[1..]);
        self.domains.push(domain);
        self.batch_size += 1;
    }

    /// `[batch_size, seq_len]` as tensor dimensions.
    pub fn shape(&self) -> [i64; 2] {
        [self.batch_size as i64, self.seq_len as i64]
    }

    /// Number of target tokens, `batch_size * seq_len`.
    pub fn n_tokens(&self) -> usize {
        self.batch_size * self.seq_len
    }

    /// Input tokens of row `r` (panics if `r >= batch_size`).
    pub fn input_row(&self, r: usize) -> &[i64] {
        &self.inputs[r * self.seq_len..(r + 1) * self.seq_len]
    }

    /// Target tokens of row `r` (panics if `r >= batch_size`).
    pub fn target_row(&self, r: usize) -> &[i64] {
        &self.targets[r * self.seq_len..(r + 1) * self.seq_len]
    }

    /// The rows of `parts`, in order, as one batch (e.g. the M sites' batches of one step,
    /// which is what one site with M× the batch sees). All parts must share `seq_len`;
    /// an empty slice is an error (the row length would be unknown).
    pub fn concat(parts: &[Batch]) -> Result<Batch, DataError> {
        let first = parts
            .first()
            .ok_or_else(|| DataError::Usage("Batch::concat: no batches given".to_string()))?;
        let rows: usize = parts.iter().map(|b| b.batch_size).sum();
        let mut out = Batch::with_capacity(first.seq_len, rows);
        for (i, b) in parts.iter().enumerate() {
            if b.seq_len != first.seq_len {
                return Err(DataError::Usage(format!(
                    "Batch::concat: part {i} has seq_len {} but part 0 has {}; all parts must match",
                    b.seq_len, first.seq_len
                )));
            }
            out.inputs.extend_from_slice(&b.inputs);
            out.targets.extend_from_slice(&b.targets);
            out.domains.extend_from_slice(&b.domains);
            out.batch_size += b.batch_size;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_shifts_targets_and_concat_keeps_row_order() {
        let mut a = Batch::with_capacity(3, 2);
        a.push_sequence(0, &[1, 2, 3, 4]);
        a.push_sequence(1, &[5, 6, 7, 8]);
        assert_eq!(a.inputs, vec![1, 2, 3, 5, 6, 7]);
        assert_eq!(a.targets, vec![2, 3, 4, 6, 7, 8]);
        assert_eq!(a.shape(), [2, 3]);
        let mut b = Batch::with_capacity(3, 1);
        b.push_sequence(2, &[9, 10, 11, 12]);
        let c = Batch::concat(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(c.batch_size, 3);
        assert_eq!(c.input_row(2), &[9, 10, 11]);
        assert_eq!(c.target_row(0), &[2, 3, 4]);
        assert_eq!(c.domains, vec![0, 1, 2]);
        let mut d = Batch::with_capacity(2, 1);
        d.push_sequence(0, &[1, 2, 3]);
        assert!(Batch::concat(&[a, d])
            .unwrap_err()
            .to_string()
            .contains("seq_len 2 but part 0 has 3"));
        assert!(Batch::concat(&[]).is_err());
    }
}
