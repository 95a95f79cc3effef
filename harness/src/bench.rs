//! `bench-step`: training-step throughput of the model on this machine, with the achieved
//! FLOP rate put against the fp32 matmul rate measured in the same run.
//!
//! tokens/s = B·S / median step time (forward + backward + clip + AdamW).
//! Achieved GFLOP/s = tokens/s · (6·N_active + 12·L·d·S) / 1e9 (PaLM convention).
//! MFU = achieved / matmul GFLOP/s, the latter from square fp32 matmuls of size n
//! (2n³ FLOPs each) timed on the same threads, so the ratio needs no vendor peak figure.

use std::time::Instant;

use serde::Serialize;
use tch::{Kind, Tensor};

use crate::model::{ModelConfig, MoeModel, Residency};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig};

#[derive(Debug, Serialize)]
pub struct StepBench {
    pub preset: String,
    pub threads: usize,
    pub tokens_per_step: usize,
    pub steps_timed: usize,
    pub step_ms_median: f64,
    pub step_ms_min: f64,
    pub tokens_per_s: f64,
    pub flops_per_token: f64,
    pub gflops: f64,
    pub matmul_gflops: f64,
    pub mfu: f64,
    /// Share of the step's model FLOPs in expert matmuls (what skip-token can save).
    pub expert_flop_share: f64,
    pub n_params: usize,
    pub n_active_matmul: usize,
}

/// Median fp32 matmul rate (GFLOP/s) of n×n products on the current thread setting.
pub fn matmul_gflops(n: i64, reps: usize) -> f64 {
    let opts = (Kind::Float, tch::Device::Cpu);
    let a = Tensor::randn([n, n], opts);
    let b = Tensor::randn([n, n], opts);
    let _ = a.matmul(&b); // warm-up
    let mut rates = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        let c = a.matmul(&b);
        let _ = c.double_value(&[0, 0]);
        rates.push(2.0 * (n as f64).powi(3) / t.elapsed().as_secs_f64() / 1e9);
    }
    median(&mut rates)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Time `steps` training steps after `warmup` untimed ones.
pub fn bench_step(cfg: &ModelConfig, preset: &str, threads: usize, warmup: usize, steps: usize) -> StepBench {
    tch::set_num_threads(threads as i32);
    let matmul = matmul_gflops(1024, 5);
    let model = MoeModel::new(cfg, Residency::full(cfg), 0);
    let mut opt = AdamW::new(AdamWConfig::default(), model.store.numel(), model.store.layout.decayed.clone());
    let (b, s) = (cfg.batch_size as i64, cfg.seq_len as i64);
    tch::manual_seed(1);
    let inputs = Tensor::randint(cfg.vocab_size as i64, [b, s], (Kind::Int64, tch::Device::Cpu));
    let targets = Tensor::randint(cfg.vocab_size as i64, [b, s], (Kind::Int64, tch::Device::Cpu));
    let mut times = Vec::with_capacity(steps);
    for i in 0..warmup + steps {
        let t = Instant::now();
        let out = model.forward(&inputs, &targets);
        let mut g = model.flat_grad(&out.loss);
        clip_grad_norm(&mut g, 1.0);
        opt.step(&model.store.flat, &g, 1e-4);
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    let med = median(&mut times);
    let tokens = cfg.tokens_per_step();
    let fpt = cfg.train_flops_per_token();
    let tps = tokens as f64 / med;
    let gflops = tps * fpt / 1e9;
    let expert_flops = 6.0 * (cfg.n_layers * cfg.top_k * cfg.params_per_expert()) as f64;
    StepBench {
        preset: preset.to_string(),
        threads,
        tokens_per_step: tokens,
        steps_timed: steps,
        step_ms_median: med * 1e3,
        step_ms_min: min * 1e3,
        tokens_per_s: tps,
        flops_per_token: fpt,
        gflops,
        matmul_gflops: matmul,
        mfu: gflops / matmul,
        expert_flop_share: expert_flops / fpt,
        n_params: cfg.total_params(),
        n_active_matmul: cfg.active_matmul_params(),
    }
}
