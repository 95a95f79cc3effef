//! Phase breakdown of one training step in process CPU time (robust to other load).
//! `cargo run --release -p fomoe-harness --example profile_step -- proxy-s 2`
use harness::model::{ModelConfig, MoeModel, Residency};
use harness::optim::{clip_grad_norm, AdamW, AdamWConfig};
use tch::{Kind, Tensor};

fn cpu_s() -> f64 {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc_rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a writable struct laid out as the kernel's rusage.
    unsafe { getrusage(0, &mut ru) };
    ru.utime.0 as f64 + ru.utime.1 as f64 * 1e-6 + ru.stime.0 as f64 + ru.stime.1 as f64 * 1e-6
}
#[repr(C)]
struct libc_rusage {
    utime: (i64, i64),
    stime: (i64, i64),
    rest: [i64; 14],
}
#[allow(improper_ctypes)]
extern "C" {
    fn getrusage(who: i32, ru: *mut libc_rusage) -> i32;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let preset = args.get(1).map(String::as_str).unwrap_or("proxy-s");
    let threads: i32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    tch::set_num_threads(threads);
    if std::env::var_os("NO_TUNE").is_none() {
        println!("allocator tuned: {}", harness::sys::tune_allocator());
    }
    let cfg = ModelConfig::preset(preset).unwrap();
    let model = MoeModel::new(&cfg, Residency::full(&cfg), 0);
    let mut opt = AdamW::new(
        AdamWConfig::default(),
        model.store.numel(),
        model.store.layout.decayed.clone(),
    );
    let (b, s) = (cfg.batch_size as i64, cfg.seq_len as i64);
    let x = Tensor::randint(256, [b, s], (Kind::Int64, tch::Device::Cpu));
    let y = Tensor::randint(256, [b, s], (Kind::Int64, tch::Device::Cpu));
    let mut acc = [0f64; 4];
    let mut wall = [0f64; 3];
    let n = 6;
    for i in 0..n + 1 {
        let (w0, t0) = (std::time::Instant::now(), cpu_s());
        let out = model.forward(&x, &y);
        let (w1, t1) = (std::time::Instant::now(), cpu_s());
        let mut g = model.flat_grad(&out.loss);
        let (w2, t2) = (std::time::Instant::now(), cpu_s());
        clip_grad_norm(&mut g, 1.0);
        opt.step(&model.store.flat, &g, 1e-4);
        let (w3, t3) = (std::time::Instant::now(), cpu_s());
        if i > 0 {
            acc[0] += t1 - t0;
            acc[1] += t2 - t1;
            acc[2] += t3 - t2;
            wall[0] += (w1 - w0).as_secs_f64();
            wall[1] += (w2 - w1).as_secs_f64();
            wall[2] += (w3 - w2).as_secs_f64();
        }
    }
    let tot: f64 = acc.iter().sum();
    println!("CPU-s per step: fwd {:.3} bwd {:.3} opt {:.3} total {:.3}; est. tokens/s at {} uncontended threads: {:.0}",
        acc[0] / n as f64, acc[1] / n as f64, acc[2] / n as f64, tot / n as f64, threads, (b * s) as f64 * threads as f64 / (tot / n as f64));
    let wt: f64 = wall.iter().sum::<f64>() / n as f64;
    println!(
        "wall s per step: fwd {:.3} bwd {:.3} opt {:.3} total {:.3} -> {:.0} tokens/s",
        wall[0] / n as f64,
        wall[1] / n as f64,
        wall[2] / n as f64,
        wt,
        (b * s) as f64 / wt
    );
}
