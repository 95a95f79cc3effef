//! The device knob end to end on the CPU: the CUDA path's host copies of every method's
//! wire payloads (forced with `Device::Cpu`) move the same bytes and give bit-identical
//! losses; bf16 precision trains close to fp32; the manifest records the device.

use std::path::Path;

use harness::config::{Method, RunConfig};
use harness::device::{enter, DeviceChoice, Precision, Runtime};
use harness::net::Backend;
use harness::runner::{run_one, RunOptions, RunOutcome};
use harness::telemetry::StepRow;

fn base(method: Method, sites: usize) -> RunConfig {
    let mut c = RunConfig {
        method,
        sites,
        steps: 8,
        inner_steps: 4,
        threads_per_site: Some(1),
        ..Default::default()
    };
    c.network.backend = Backend::Sim;
    c.eval_sequences = 4;
    c
}

fn run(cfg: &RunConfig, dir: &Path) -> RunOutcome {
    run_one(cfg, dir, &baselines::registry(), &RunOptions::default())
        .unwrap_or_else(|e| panic!("{} run failed: {e:#}", cfg.method.name()))
}

fn steps(dir: &Path) -> Vec<StepRow> {
    csv::Reader::from_path(dir.join("steps.csv"))
        .unwrap()
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn staged_host_copies_move_the_same_bytes_and_losses_for_every_method() {
    for method in [Method::Ddp, Method::Diloco, Method::Photon, Method::Fomoe] {
        let cfg = base(method, 4);
        let tmp = tempfile::tempdir().unwrap();
        let plain = run(&cfg, &tmp.path().join("plain"));
        let staged = {
            let _g = enter(Runtime {
                stage_payloads: true,
                ..Runtime::CPU
            });
            run(&cfg, &tmp.path().join("staged"))
        };
        let bytes = |o: &RunOutcome| -> Vec<(u64, u64)> {
            o.sites
                .iter()
                .map(|s| (s.payload_sent, s.expected_payload_sent))
                .collect()
        };
        assert_eq!(bytes(&plain), bytes(&staged), "{method:?}: bytes differ");
        for s in &staged.sites {
            assert!(
                s.payload_sent > 0,
                "{method:?}: site {} sent nothing",
                s.site
            );
            assert_eq!(s.payload_sent, s.expected_payload_sent, "{method:?}");
        }
        let losses = |d: &Path| -> Vec<u64> { steps(d).iter().map(|r| r.loss.to_bits()).collect() };
        assert_eq!(
            losses(&tmp.path().join("plain")),
            losses(&tmp.path().join("staged")),
            "{method:?}: losses differ"
        );
    }
}

#[test]
fn bf16_precision_trains_close_to_fp32_but_not_identically() {
    let mut cfg = base(Method::Single, 1);
    cfg.steps = 16;
    let tmp = tempfile::tempdir().unwrap();
    run(&cfg, &tmp.path().join("fp32"));
    cfg.precision = Precision::Bf16;
    run(&cfg, &tmp.path().join("bf16"));
    let a = steps(&tmp.path().join("fp32"));
    let b = steps(&tmp.path().join("bf16"));
    assert_eq!(a.len(), b.len());
    let max_diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x.ce - y.ce).abs())
        .fold(0.0, f64::max);
    // bf16 keeps 8 bits of mantissa: per-matmul relative error about 2^-8; over 16 steps
    // of tiny the cross-entropy stays within a few hundredths of a nat of fp32's.
    assert!(max_diff < 0.05, "bf16 strays {max_diff} nats from fp32");
    assert!(max_diff > 0.0, "bf16 must change the arithmetic");
    assert!(a.last().unwrap().ce < a[0].ce && b.last().unwrap().ce < b[0].ce);
}

#[test]
fn cuda_without_a_gpu_fails_before_anything_is_written() {
    if harness::device::cuda::availability().is_ok() {
        return; // a GPU machine: the error path does not exist there
    }
    let mut cfg = base(Method::Diloco, 2);
    cfg.device = DeviceChoice::Cuda;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let err = run_one(&cfg, &dir, &baselines::registry(), &RunOptions::default()).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.starts_with("invalid device = cuda: no usable CUDA device here"),
        "{msg}"
    );
    assert!(
        !dir.exists(),
        "nothing may be written for a run that cannot start"
    );
}

#[test]
fn the_manifest_records_the_device_it_ran_on() {
    use harness::results::{manifest::RunEnv, Manifest, RunDir, MANIFEST_FILE};
    let cfg = base(Method::Diloco, 2);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("diloco-s0");
    let env = RunEnv::detect("t", "cpu");
    let mut dir = RunDir::create(&path, "diloco-s0", &cfg, &env).unwrap();
    harness::runner::execute_in_run_dir(
        &cfg,
        &mut dir,
        &baselines::registry(),
        &RunOptions::default(),
    )
    .unwrap();
    let m = Manifest::read(&path.join(MANIFEST_FILE)).unwrap();
    assert_eq!(m.backend, "cpu");
    let d = m.device.expect("manifest.device");
    assert_eq!((d.device.as_str(), d.gpus), ("cpu", 0));
    assert_eq!(d.precision, Precision::Fp32);
    // The libtorch this test runs on, read at run time.
    assert!(
        d.libtorch.as_deref().is_some_and(|v| v.starts_with("2.")),
        "{:?}",
        d.libtorch
    );
    assert!(d.sharing.starts_with("cpu: 2 site(s)"), "{}", d.sharing);
}
