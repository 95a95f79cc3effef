//! Parameters as views into one flat f32 buffer.
//!
//! Every parameter of a site's model is a view into `ParamStore::flat` at a fixed offset, in
//! a layout chosen so the groups the methods treat differently are contiguous ranges:
//!
//! ```text
//! [ dense, no weight decay (norm gains) | dense, decayed (embeddings, attention, routers) |
//!   expert (l0,e_a) fc1 fc2 | expert (l0,e_b) fc1 fc2 | ... | expert (L-1, e_z) fc1 fc2 ]
//! ```
//!
//! The dense group (N_dense values) is the first two ranges together; each resident expert
//! is one contiguous block of 2·d·d_e values. The optimiser, gradient clipping and the
//! collectives then work on flat slices: AdamW is a handful of vectorised ops over the
//! whole buffer, FoMoE all-reduces the dense range over all sites and each expert block
//! among its holders, and memory held is exactly `4·len(flat)` bytes per copy.
//! A site that does not hold an expert has no slot for it: it never allocates it.
//!
//! Names follow PyTorch conventions (`blocks.0.moe.experts.5.fc1.weight`, Linear weights
//! stored [out, in]) so a safetensors checkpoint loads into a PyTorch model by name.

use std::collections::BTreeMap;
use std::ops::Range;

use tch::{Kind, Tensor};

use super::config::ModelConfig;

/// Which group a parameter belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ParamGroup {
    /// Dense, not weight-decayed (RMSNorm gains).
    DenseNoDecay,
    /// Dense, weight-decayed (embeddings, positions, attention, routers).
    DenseDecay,
    /// Expert `expert` (global id) of block `layer`.
    Expert { layer: usize, expert: usize },
}

impl ParamGroup {
    pub fn is_dense(self) -> bool {
        !matches!(self, ParamGroup::Expert { .. })
    }
}

/// Name, shape and place of one parameter in the flat buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<i64>,
    pub group: ParamGroup,
    pub offset: usize,
    pub numel: usize,
}

/// Which experts a site holds, per layer (global expert ids, ascending).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Residency {
    pub per_layer: Vec<Vec<usize>>,
    pub n_experts: usize,
}

impl Residency {
    /// Every expert resident in every layer (a full replica).
    pub fn full(cfg: &ModelConfig) -> Self {
        Self {
            per_layer: vec![(0..cfg.n_experts).collect(); cfg.n_layers],
            n_experts: cfg.n_experts,
        }
    }

    /// The same expert set in every layer. Ids are sorted and deduplicated.
    pub fn uniform(cfg: &ModelConfig, experts: &[usize]) -> Self {
        let mut e: Vec<usize> = experts.to_vec();
        e.sort_unstable();
        e.dedup();
        Self {
            per_layer: vec![e; cfg.n_layers],
            n_experts: cfg.n_experts,
        }
    }

    pub fn is_full(&self) -> bool {
        self.per_layer.iter().all(|l| l.len() == self.n_experts)
    }

    pub fn holds(&self, layer: usize, expert: usize) -> bool {
        self.per_layer[layer].binary_search(&expert).is_ok()
    }

    /// Number of (layer, expert) blocks held.
    pub fn blocks(&self) -> usize {
        self.per_layer.iter().map(Vec::len).sum()
    }
}

/// The layout of a model's parameters, without storage.
#[derive(Clone, Debug)]
pub struct ParamLayout {
    pub specs: Vec<ParamSpec>,
    pub total: usize,
    /// Range of the dense group (both dense subgroups).
    pub dense: Range<usize>,
    /// Range of the decayed values (dense decayed + all experts).
    pub decayed: Range<usize>,
    /// Range of each resident expert block, keyed by (layer, expert).
    pub experts: BTreeMap<(usize, usize), Range<usize>>,
}

impl ParamLayout {
    pub fn new(cfg: &ModelConfig, residency: &Residency) -> Self {
        let d = cfg.d_model as i64;
        let de = cfg.d_expert as i64;
        let mut no_decay: Vec<(String, Vec<i64>, ParamGroup)> = Vec::new();
        let mut decay: Vec<(String, Vec<i64>, ParamGroup)> = Vec::new();
        let mut expert: Vec<(String, Vec<i64>, ParamGroup)> = Vec::new();
        decay.push((
            "wte.weight".into(),
            vec![cfg.vocab_size as i64, d],
            ParamGroup::DenseDecay,
        ));
        decay.push((
            "wpe.weight".into(),
            vec![cfg.seq_len as i64, d],
            ParamGroup::DenseDecay,
        ));
        for l in 0..cfg.n_layers {
            let p = format!("blocks.{l}");
            no_decay.push((format!("{p}.ln1.weight"), vec![d], ParamGroup::DenseNoDecay));
            no_decay.push((format!("{p}.ln2.weight"), vec![d], ParamGroup::DenseNoDecay));
            decay.push((
                format!("{p}.attn.qkv.weight"),
                vec![3 * d, d],
                ParamGroup::DenseDecay,
            ));
            decay.push((
                format!("{p}.attn.proj.weight"),
                vec![d, d],
                ParamGroup::DenseDecay,
            ));
            decay.push((
                format!("{p}.moe.router.weight"),
                vec![cfg.n_experts as i64, d],
                ParamGroup::DenseDecay,
            ));
            for &e in &residency.per_layer[l] {
                let g = ParamGroup::Expert {
                    layer: l,
                    expert: e,
                };
                expert.push((format!("{p}.moe.experts.{e}.fc1.weight"), vec![de, d], g));
                expert.push((format!("{p}.moe.experts.{e}.fc2.weight"), vec![d, de], g));
            }
        }
        no_decay.push(("ln_f.weight".into(), vec![d], ParamGroup::DenseNoDecay));

        let mut specs = Vec::new();
        let mut offset = 0usize;
        let mut experts = BTreeMap::new();
        let mut dense_end = 0;
        let mut decay_start = 0;
        for (i, list) in [no_decay, decay, expert].into_iter().enumerate() {
            if i == 1 {
                decay_start = offset;
            }
            if i == 2 {
                dense_end = offset;
            }
            for (name, shape, group) in list {
                let numel = shape.iter().product::<i64>() as usize;
                if let ParamGroup::Expert { layer, expert } = group {
                    let r = experts.entry((layer, expert)).or_insert(offset..offset);
                    r.end = offset + numel;
                }
                specs.push(ParamSpec {
                    name,
                    shape,
                    group,
                    offset,
                    numel,
                });
                offset += numel;
            }
        }
        Self {
            specs,
            total: offset,
            dense: 0..dense_end,
            decayed: decay_start..offset,
            experts,
        }
    }

    pub fn spec(&self, name: &str) -> Option<&ParamSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    /// The values of `flat` (laid out by `self`) moved to the layout `to`: every parameter
    /// both layouts have is copied by name; each expert block only `to` has is filled from
    /// `incoming[(layer, expert)]` (the whole block, fc1 then fc2), or zero when absent
    /// there. This is how a change of residency carries the model, the optimiser moments and
    /// the outer state over in one rule.
    pub fn move_values(
        &self,
        to: &ParamLayout,
        flat: &Tensor,
        incoming: &BTreeMap<(usize, usize), &[f32]>,
    ) -> Result<Vec<f32>, String> {
        let old = tensor_to_vec(flat);
        if old.len() != self.total {
            return Err(format!(
                "{} values for a layout of {}",
                old.len(),
                self.total
            ));
        }
        let mut out = vec![0f32; to.total];
        for spec in &to.specs {
            if let Some(o) = self.spec(&spec.name) {
                out[spec.offset..spec.offset + spec.numel]
                    .copy_from_slice(&old[o.offset..o.offset + o.numel]);
            }
        }
        for (&(layer, expert), r) in &to.experts {
            if self.experts.contains_key(&(layer, expert)) {
                continue;
            }
            if let Some(v) = incoming.get(&(layer, expert)) {
                if v.len() != r.len() {
                    return Err(format!(
                        "expert ({layer},{expert}): {} values, its block has {}",
                        v.len(),
                        r.len()
                    ));
                }
                out[r.clone()].copy_from_slice(v);
            }
        }
        Ok(out)
    }
}

/// A site's parameters: one flat f32 buffer and a leaf view per parameter.
pub struct ParamStore {
    pub layout: ParamLayout,
    pub residency: Residency,
    /// All values, no autograd history of its own.
    pub flat: Tensor,
    /// One leaf per parameter (view of `flat`, requires grad), in layout order.
    pub params: Vec<Tensor>,
}

impl ParamStore {
    /// Zero-initialised store for `residency`, on the calling thread's device.
    pub fn zeros(cfg: &ModelConfig, residency: Residency) -> Self {
        let layout = ParamLayout::new(cfg, &residency);
        let flat = Tensor::zeros(
            [layout.total as i64],
            (Kind::Float, crate::device::device()),
        );
        let params = layout
            .specs
            .iter()
            .map(|s| {
                flat.narrow(0, s.offset as i64, s.numel as i64)
                    .view(s.shape.as_slice())
                    .set_requires_grad(true)
            })
            .collect();
        Self {
            layout,
            residency,
            flat,
            params,
        }
    }

    /// The seeded initial model: N(0, 0.02) weights, output projections (attention proj and
    /// expert fc2) N(0, 0.02/√(2L)), norm gains 1. Values come from the project's portable
    /// RNG ([`crate::rng::Rng`]) seeded per parameter by (seed, parameter name): a site
    /// holding a subset of the experts gets bit-identical values for what it holds, the
    /// result is the same on every machine, and no global generator is touched (libtorch's
    /// is process-wide, so concurrent users would interleave draws).
    pub fn init(cfg: &ModelConfig, residency: Residency, seed: u64) -> Self {
        let store = Self::zeros(cfg, residency);
        let std_out = 0.02 / (2.0 * cfg.n_layers as f64).sqrt();
        let mut values = vec![0f32; store.layout.total];
        for spec in &store.layout.specs {
            let out = &mut values[spec.offset..spec.offset + spec.numel];
            if spec.name.ends_with("ln1.weight")
                || spec.name.ends_with("ln2.weight")
                || spec.name == "ln_f.weight"
            {
                out.fill(1.0);
            } else {
                let std = if spec.name.ends_with("proj.weight") || spec.name.ends_with("fc2.weight")
                {
                    std_out
                } else {
                    0.02
                };
                let mut rng = crate::rng::Rng::new(name_seed(seed, &spec.name));
                for v in out.iter_mut() {
                    *v = (rng.normal() * std) as f32;
                }
            }
        }
        let mut store = store;
        store.load_flat(&values);
        store
    }

    pub fn numel(&self) -> usize {
        self.layout.total
    }

    /// Bytes held by the parameter values (one f32 copy).
    pub fn bytes(&self) -> usize {
        4 * self.layout.total
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.layout
            .specs
            .iter()
            .position(|s| s.name == name)
            .map(|i| &self.params[i])
    }

    /// Copy every parameter this store holds from `other` by name (e.g. a site's subset from
    /// the full initial model). Errors if `other` lacks one or shapes differ.
    pub fn copy_from(&mut self, other: &ParamStore) -> Result<(), String> {
        tch::no_grad(|| {
            for (spec, p) in self.layout.specs.iter().zip(&self.params) {
                let src = other
                    .get(&spec.name)
                    .ok_or_else(|| format!("source model has no parameter {}", spec.name))?;
                if src.size() != spec.shape {
                    return Err(format!(
                        "parameter {}: shape {:?} in source, {:?} here",
                        spec.name,
                        src.size(),
                        spec.shape
                    ));
                }
                p.detach().copy_(src);
            }
            Ok(())
        })
    }

    /// Copy every parameter `other` holds into this store (which must hold a superset);
    /// the rest stays as it is. Used to assemble a full model from partial ones.
    pub fn copy_held_from(&self, other: &ParamStore) {
        tch::no_grad(|| {
            for (spec, src) in other.layout.specs.iter().zip(&other.params) {
                if let Some(dst) = self.get(&spec.name) {
                    dst.detach().copy_(src);
                }
            }
        });
    }

    /// The values as a Vec<f32> (for communication and tests).
    pub fn to_vec(&self) -> Vec<f32> {
        tensor_to_vec(&self.flat)
    }

    /// Overwrite all values from a slice of the same length.
    pub fn load_flat(&mut self, values: &[f32]) {
        assert_eq!(
            values.len(),
            self.layout.total,
            "load_flat: length mismatch"
        );
        tch::no_grad(|| self.flat.copy_(&Tensor::from_slice(values)));
    }
}

/// A stable 64-bit seed per (seed, name): FNV-1a of the name mixed with the seed.
pub fn name_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Run `f` on the values of a contiguous f32 CPU tensor, in place (no copy).
///
/// Panics if the tensor is not a contiguous f32 CPU tensor. The `&mut` borrow keeps this
/// handle from being used meanwhile; the caller must not share the storage with a tensor
/// that is read concurrently (gradients from `flat_grad` own theirs).
pub fn with_f32_values<R>(t: &mut Tensor, f: impl FnOnce(&mut [f32]) -> R) -> R {
    assert!(
        t.kind() == Kind::Float && t.device() == tch::Device::Cpu && t.is_contiguous(),
        "with_f32_values: contiguous f32 CPU tensor required"
    );
    let n = t.numel();
    if n == 0 {
        return f(&mut []);
    }
    // SAFETY: the tensor is a contiguous f32 CPU tensor of `n` elements, so `data_ptr`
    // points at `n` initialised, properly aligned f32 values that live as long as `t`,
    // which stays mutably borrowed for the duration of `f`.
    let values = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n) };
    f(values)
}

/// Copy a (contiguous or not) f32 tensor into a Vec.
pub fn tensor_to_vec(t: &Tensor) -> Vec<f32> {
    let t = t.detach().contiguous().view(-1);
    let n = t.numel();
    let mut v = vec![0f32; n];
    t.copy_data(&mut v, n);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_contiguous_per_group() {
        let cfg = ModelConfig::preset("tiny").unwrap();
        let full = ParamLayout::new(&cfg, &Residency::full(&cfg));
        assert_eq!(full.total, cfg.total_params());
        assert_eq!(full.dense.len(), cfg.dense_params());
        assert_eq!(full.experts.len(), cfg.n_layers * cfg.n_experts);
        for r in full.experts.values() {
            assert_eq!(r.len(), cfg.params_per_expert());
        }
        // Offsets tile the buffer with no gap or overlap.
        let mut end = 0;
        for s in &full.specs {
            assert_eq!(s.offset, end, "{}", s.name);
            end += s.numel;
        }
        assert_eq!(end, full.total);
        let part = ParamLayout::new(&cfg, &Residency::uniform(&cfg, &[1, 4]));
        assert_eq!(
            part.total,
            cfg.dense_params() + cfg.n_layers * 2 * cfg.params_per_expert()
        );
        assert!(part.spec("blocks.1.moe.experts.4.fc2.weight").is_some());
        assert!(part.spec("blocks.1.moe.experts.0.fc2.weight").is_none());
    }

    #[test]
    fn move_values_copies_by_name_and_fills_gained_experts() {
        let cfg = ModelConfig::preset("tiny").unwrap();
        let a = ParamStore::init(&cfg, Residency::uniform(&cfg, &[1, 2]), 5);
        let to = ParamLayout::new(&cfg, &Residency::uniform(&cfg, &[2, 6]));
        let gained = vec![0.5f32; cfg.params_per_expert()];
        let mut incoming = BTreeMap::new();
        incoming.insert((0, 6), gained.as_slice());
        let moved = a.layout.move_values(&to, &a.flat, &incoming).unwrap();
        let mut b = ParamStore::zeros(&cfg, Residency::uniform(&cfg, &[2, 6]));
        b.load_flat(&moved);
        for name in ["wte.weight", "blocks.1.moe.experts.2.fc2.weight"] {
            assert!(b.get(name).unwrap().equal(a.get(name).unwrap()), "{name}");
        }
        let r = to.experts[&(0, 6)].clone();
        assert_eq!(&moved[r], gained.as_slice(), "gained from incoming");
        let r = to.experts[&(1, 6)].clone();
        assert!(
            moved[r].iter().all(|&v| v == 0.0),
            "gained without state: zero"
        );
        let short = [1.0f32; 3];
        incoming.insert((1, 6), short.as_slice());
        assert!(a.layout.move_values(&to, &a.flat, &incoming).is_err());
    }

    #[test]
    fn subset_init_equals_full_init_on_what_it_holds() {
        let cfg = ModelConfig::preset("tiny").unwrap();
        let full = ParamStore::init(&cfg, Residency::full(&cfg), 7);
        let part = ParamStore::init(&cfg, Residency::uniform(&cfg, &[3, 6]), 7);
        for (spec, p) in part.layout.specs.iter().zip(&part.params) {
            let q = full.get(&spec.name).unwrap();
            assert!(p.equal(q), "{}", spec.name);
        }
        // The views really alias the flat buffer.
        let w = part.get("wte.weight").unwrap();
        assert_eq!(
            w.double_value(&[0, 0]),
            part.flat
                .double_value(&[part.layout.spec("wte.weight").unwrap().offset as i64])
        );
        let other = ParamStore::init(&cfg, Residency::full(&cfg), 8);
        assert!(!full.flat.equal(&other.flat));
    }
}
