//! `bench-step`: training-step throughput of the model on this machine, with the achieved
//! FLOP rate put against the fp32 matmul rate measured in the same run.
//!
//! tokens/s = B·S / median step time (forward + backward + clip + AdamW).
//! Achieved GFLOP/s = tokens/s · (6·N_active + 12·L·d·S) / 1e9 (PaLM convention).
//! MFU = achieved / matmul GFLOP/s, the latter from square matmuls of size n (2n³ FLOPs
//! each) in the step's precision, timed on the same threads or GPU, so the ratio needs no
//! vendor peak figure. On a GPU the achieved rate is also put against the vendor's dense
//! bf16 and tf32 peaks where [`dense_peak_tflops`] knows the GPU (null otherwise).
//!
//! The benchmark runs on the calling thread's [`crate::device`] runtime (device and
//! precision); on a GPU every timed interval ends with a device synchronisation.

use std::time::Instant;

use serde::Serialize;
use tch::{Kind, Tensor};

use crate::device::facts::{dense_peak_tflops, DeviceFacts};
use crate::device::Precision;
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
    /// Median CPU seconds of the process per step (all threads). On a machine shared with
    /// other work this is the figure that holds still: with `OMP_WAIT_POLICY=passive` it
    /// counts the step's work without the spinning of waiting threads.
    pub cpu_s_per_step_median: f64,
    pub tokens_per_s: f64,
    pub flops_per_token: f64,
    pub gflops: f64,
    pub matmul_gflops: f64,
    pub mfu: f64,
    /// Share of the step's model FLOPs in expert matmuls (what skip-token can save).
    pub expert_flop_share: f64,
    /// Share of experts the benchmarked model holds (1 = full replica).
    pub resident_fraction: f64,
    /// Share of routed slots that hit non-resident experts (skipped work).
    pub skip_rate: f64,
    pub n_params: usize,
    pub n_active_matmul: usize,
    /// Where it ran (device, name, driver, CUDA and libtorch versions, precision).
    pub device: DeviceFacts,
    /// Achieved over the GPU's dense bf16 / tf32 peak (null on the CPU or an unknown GPU).
    pub mfu_vs_bf16_peak: Option<f64>,
    pub mfu_vs_tf32_peak: Option<f64>,
}

/// Best matmul rate (GFLOP/s) of n×n products on the current thread setting and device,
/// in `precision` (fp32 or bf16 operands): the fastest of `reps` products, i.e. the rate
/// this machine reaches when nothing else runs (on a shared machine the median would
/// undercount the peak and flatter the MFU).
pub fn matmul_gflops(n: i64, reps: usize, precision: Precision) -> f64 {
    let kind = match precision {
        Precision::Fp32 => Kind::Float,
        Precision::Bf16 => Kind::BFloat16,
    };
    let opts = (kind, crate::device::device());
    let a = Tensor::randn([n, n], opts);
    let b = Tensor::randn([n, n], opts);
    let _ = a.matmul(&b); // warm-up
    crate::device::synchronize();
    let mut rates = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        let c = a.matmul(&b);
        let _ = c.double_value(&[0, 0]);
        rates.push(2.0 * (n as f64).powi(3) / t.elapsed().as_secs_f64() / 1e9);
    }
    rates.iter().cloned().fold(0.0, f64::max)
}

/// Matrix size for [`matmul_gflops`]: large enough to reach the device's rate.
fn matmul_size() -> i64 {
    if crate::device::device().is_cuda() {
        8192
    } else {
        1024
    }
}

/// CPU seconds consumed by this process so far (every thread).
fn process_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Time `steps` training steps after `warmup` untimed ones. `resident_fraction` < 1 gives
/// the model of a FoMoE site holding that share of the experts (round-robin site 0, skip
/// policy `drop`), so its step can be compared with a full replica's.
pub fn bench_step(
    cfg: &ModelConfig,
    preset: &str,
    threads: usize,
    warmup: usize,
    steps: usize,
    resident_fraction: f64,
) -> StepBench {
    tch::set_num_threads(threads as i32);
    let precision = crate::device::precision();
    let device = crate::device::device();
    let mut matmul = matmul_gflops(matmul_size(), 10, precision);
    let held =
        ((cfg.n_experts as f64 * resident_fraction).round() as usize).clamp(1, cfg.n_experts);
    let residency = Residency::uniform(cfg, &(0..held).collect::<Vec<_>>());
    let mut model = MoeModel::new(cfg, residency, 0);
    if held < cfg.n_experts {
        model.skip_policy = Some(crate::model::SkipPolicy::Drop);
    }
    let mut opt = AdamW::new(
        AdamWConfig::default(),
        model.store.numel(),
        model.store.layout.decayed.clone(),
    );
    let (b, s) = (cfg.batch_size as i64, cfg.seq_len as i64);
    tch::manual_seed(1);
    let inputs = Tensor::randint(cfg.vocab_size as i64, [b, s], (Kind::Int64, device));
    let targets = Tensor::randint(cfg.vocab_size as i64, [b, s], (Kind::Int64, device));
    let mut times = Vec::with_capacity(steps);
    let mut cpu_times = Vec::with_capacity(steps);
    let mut skipped = 0i64;
    let mut slots = 0i64;
    for i in 0..warmup + steps {
        let t = Instant::now();
        let cpu0 = process_cpu_s();
        let out = model.forward(&inputs, &targets);
        skipped += out.routing.iter().map(|r| r.skipped_slots).sum::<i64>();
        slots += out
            .routing
            .iter()
            .map(|r| r.tokens * cfg.top_k as i64)
            .sum::<i64>();
        let mut g = model.flat_grad(&out.loss);
        clip_grad_norm(&mut g, 1.0);
        opt.step(&model.store.flat, &g, 1e-4);
        crate::device::synchronize();
        if i >= warmup {
            times.push(t.elapsed().as_secs_f64());
            cpu_times.push(process_cpu_s() - cpu0);
        }
    }
    matmul = matmul.max(matmul_gflops(matmul_size(), 10, precision));
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    let med = median(&mut times);
    let tokens = cfg.tokens_per_step();
    let fpt = cfg.train_flops_per_token();
    let tps = tokens as f64 / med;
    let gflops = tps * fpt / 1e9;
    let expert_flops = 6.0 * (cfg.n_layers * cfg.top_k * cfg.params_per_expert()) as f64;
    let facts = DeviceFacts::detect(device, precision, 1, "bench-step");
    let peaks = facts.name.as_deref().and_then(dense_peak_tflops);
    let peaks = peaks.filter(|_| device.is_cuda());
    StepBench {
        preset: preset.to_string(),
        threads,
        tokens_per_step: tokens,
        steps_timed: steps,
        step_ms_median: med * 1e3,
        step_ms_min: min * 1e3,
        cpu_s_per_step_median: median(&mut cpu_times),
        tokens_per_s: tps,
        flops_per_token: fpt,
        gflops,
        matmul_gflops: matmul,
        mfu: gflops / matmul,
        expert_flop_share: expert_flops / fpt,
        resident_fraction: held as f64 / cfg.n_experts as f64,
        skip_rate: if slots > 0 {
            skipped as f64 / slots as f64
        } else {
            0.0
        },
        n_params: cfg.total_params(),
        n_active_matmul: cfg.active_matmul_params(),
        device: facts,
        mfu_vs_bf16_peak: peaks.map(|(bf16, _)| gflops / (bf16 * 1e3)),
        mfu_vs_tf32_peak: peaks.map(|(_, tf32)| gflops / (tf32 * 1e3)),
    }
}
