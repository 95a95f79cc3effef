//! Checkpoints: safetensors files with PyTorch-style parameter names.
//!
//! A file holds every parameter the site holds under its model name
//! (`blocks.0.moe.experts.5.fc1.weight`, Linear weights [out, in]), optionally the AdamW
//! moments as `optim.exp_avg.<name>` / `optim.exp_avg_sq.<name>`, other flat state under
//! names the caller picks (e.g. an outer optimiser), and string metadata (format, step,
//! config JSON). A PyTorch user loads the model with `safetensors.torch.load_file` and
//! `load_state_dict(strict=False)`. Files are written to a temporary name and renamed, so
//! a crash never leaves a half-written checkpoint under the final name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::Tensor;

use crate::model::params::{tensor_to_vec, ParamLayout, ParamStore};
use crate::optim::AdamW;

pub const FORMAT: &str = "fomoe-checkpoint-v1";

/// Named f32 tensors and metadata to write.
#[derive(Default)]
pub struct CheckpointWriter {
    entries: Vec<(String, Vec<usize>, Vec<u8>)>,
    metadata: HashMap<String, String>,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

impl CheckpointWriter {
    pub fn new() -> Self {
        let mut w = Self::default();
        w.metadata.insert("format".into(), FORMAT.into());
        w
    }

    pub fn meta(&mut self, key: &str, value: impl ToString) -> &mut Self {
        self.metadata.insert(key.into(), value.to_string());
        self
    }

    pub fn tensor(&mut self, name: String, shape: Vec<usize>, values: &[f32]) -> &mut Self {
        self.entries.push((name, shape, f32_bytes(values)));
        self
    }

    /// Every parameter of `store` under its model name, each with `prefix` in front.
    pub fn params(&mut self, prefix: &str, layout: &ParamLayout, flat: &Tensor) -> &mut Self {
        let all = tensor_to_vec(flat);
        for s in &layout.specs {
            let shape = s.shape.iter().map(|&d| d as usize).collect();
            self.entries.push((
                format!("{prefix}{}", s.name),
                shape,
                f32_bytes(&all[s.offset..s.offset + s.numel]),
            ));
        }
        self
    }

    pub fn model(&mut self, store: &ParamStore) -> &mut Self {
        self.params("", &store.layout, &store.flat)
    }

    pub fn adamw(&mut self, layout: &ParamLayout, opt: &AdamW) -> &mut Self {
        self.params("optim.exp_avg.", layout, &opt.exp_avg);
        self.params("optim.exp_avg_sq.", layout, &opt.exp_avg_sq);
        self.meta("optim.step", opt.step)
    }

    /// Write atomically (temporary file in the same directory, then rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let views: Vec<(String, TensorView<'_>)> = self
            .entries
            .iter()
            .map(|(n, s, b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
            .collect::<Result<_, safetensors::SafeTensorError>>()?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = tmp_path(path);
        safetensors::serialize_to_file(views, Some(self.metadata.clone()), &tmp)
            .with_context(|| format!("writing checkpoint {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(())
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// A checkpoint read back from disk.
#[derive(Debug)]
pub struct Checkpoint {
    bytes: Vec<u8>,
    path: PathBuf,
}

impl Checkpoint {
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("reading checkpoint {}", path.display()))?;
        let ck = Self {
            bytes,
            path: path.to_path_buf(),
        };
        let st = ck.parse()?;
        let fmt =
            st.1.metadata()
                .as_ref()
                .and_then(|m| m.get("format").cloned());
        ck.tensors()?;
        if fmt.as_deref() != Some(FORMAT) {
            bail!(
                "{}: not a fomoe checkpoint (format = {:?}, expected {FORMAT})",
                path.display(),
                fmt
            );
        }
        Ok(ck)
    }

    fn parse(&self) -> Result<(usize, safetensors::tensor::Metadata)> {
        SafeTensors::read_metadata(&self.bytes).map_err(|e| {
            anyhow::anyhow!("{}: invalid safetensors file: {e:?}", self.path.display())
        })
    }

    fn tensors(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.bytes).map_err(|e| {
            anyhow::anyhow!("{}: invalid safetensors file: {e:?}", self.path.display())
        })
    }

    pub fn meta(&self, key: &str) -> Option<String> {
        self.parse().ok()?.1.metadata().as_ref()?.get(key).cloned()
    }

    pub fn names(&self) -> Result<Vec<String>> {
        Ok(self
            .tensors()?
            .names()
            .into_iter()
            .map(String::from)
            .collect())
    }

    /// The values of tensor `name` (must be f32 with `numel` elements).
    pub fn values(&self, name: &str, numel: usize) -> Result<Vec<f32>> {
        let st = self.tensors()?;
        let t = st
            .tensor(name)
            .map_err(|_| anyhow::anyhow!("{}: missing tensor {name}", self.path.display()))?;
        if t.dtype() != Dtype::F32 {
            bail!(
                "{}: tensor {name} has dtype {:?}, expected F32",
                self.path.display(),
                t.dtype()
            );
        }
        let n: usize = t.shape().iter().product();
        if n != numel {
            bail!(
                "{}: tensor {name} has {n} values, expected {numel}",
                self.path.display()
            );
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// All values of f32 tensor `name`, whatever its size.
    pub fn all_values(&self, name: &str) -> Result<Vec<f32>> {
        let n: usize = {
            let st = self.tensors()?;
            let t = st
                .tensor(name)
                .map_err(|_| anyhow::anyhow!("{}: missing tensor {name}", self.path.display()))?;
            t.shape().iter().product()
        };
        self.values(name, n)
    }

    /// Fill a flat buffer laid out by `layout` from tensors named `prefix + param name`.
    pub fn read_params(&self, prefix: &str, layout: &ParamLayout, flat: &Tensor) -> Result<()> {
        let mut all = vec![0f32; layout.total];
        for s in &layout.specs {
            let v = self.values(&format!("{prefix}{}", s.name), s.numel)?;
            all[s.offset..s.offset + s.numel].copy_from_slice(&v);
        }
        tch::no_grad(|| flat.shallow_clone().copy_(&Tensor::from_slice(&all)));
        Ok(())
    }

    pub fn read_model(&self, store: &ParamStore) -> Result<()> {
        self.read_params("", &store.layout, &store.flat)
    }

    pub fn read_adamw(&self, layout: &ParamLayout, opt: &mut AdamW) -> Result<()> {
        self.read_params("optim.exp_avg.", layout, &opt.exp_avg)?;
        self.read_params("optim.exp_avg_sq.", layout, &opt.exp_avg_sq)?;
        opt.step = self
            .meta("optim.step")
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("{}: metadata optim.step missing", self.path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, Residency};
    use crate::optim::AdamWConfig;

    #[test]
    fn round_trip_is_bit_exact_and_names_are_pytorch_style() {
        let cfg = ModelConfig::preset("tiny").unwrap();
        let store = ParamStore::init(&cfg, Residency::uniform(&cfg, &[2, 5]), 3);
        let mut opt = AdamW::new(
            AdamWConfig::default(),
            store.numel(),
            store.layout.decayed.clone(),
        );
        let g = Tensor::randn([store.numel() as i64], (tch::Kind::Float, tch::Device::Cpu));
        opt.step(&store.flat, &g, 1e-3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ck.safetensors");
        CheckpointWriter::new()
            .model(&store)
            .adamw(&store.layout, &opt)
            .meta("step", 1)
            .write(&path)
            .unwrap();
        let ck = Checkpoint::open(&path).unwrap();
        let names = ck.names().unwrap();
        assert!(names.contains(&"blocks.1.moe.experts.5.fc2.weight".to_string()));
        assert!(names.contains(&"optim.exp_avg.wte.weight".to_string()));
        let back = ParamStore::zeros(&cfg, Residency::uniform(&cfg, &[2, 5]));
        ck.read_model(&back).unwrap();
        assert!(back.flat.equal(&store.flat));
        let mut opt2 = AdamW::new(
            AdamWConfig::default(),
            store.numel(),
            store.layout.decayed.clone(),
        );
        ck.read_adamw(&store.layout, &mut opt2).unwrap();
        assert!(opt2.exp_avg.equal(&opt.exp_avg) && opt2.exp_avg_sq.equal(&opt.exp_avg_sq));
        assert_eq!(opt2.step, 1);
        // A store holding an expert the file lacks gets a clear error.
        let other = ParamStore::zeros(&cfg, Residency::uniform(&cfg, &[0]));
        let err = ck.read_model(&other).unwrap_err().to_string();
        assert!(
            err.contains("missing tensor blocks.0.moe.experts.0.fc1.weight"),
            "{err}"
        );
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn rejects_a_file_that_is_not_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.safetensors");
        std::fs::write(&p, b"garbage").unwrap();
        assert!(Checkpoint::open(&p)
            .unwrap_err()
            .to_string()
            .contains("invalid safetensors file"));
    }
}
