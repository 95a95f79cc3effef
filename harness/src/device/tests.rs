//! Device selection, its errors, and the host/device copy of wire payloads (run on the CPU
//! with staging forced: the code path a CUDA site takes).

use tch::{Device, Kind, Tensor};

use super::staging::{upload_f32, upload_i64, with_host_f32};
use super::*;
use crate::collective::wire::{encode, WireDtype};
use crate::model::params::tensor_to_vec;

#[test]
fn device_and_precision_parse_and_name_what_is_allowed() {
    for (s, d) in [
        ("cpu", DeviceChoice::Cpu),
        ("cuda", DeviceChoice::Cuda),
        ("auto", DeviceChoice::Auto),
    ] {
        assert_eq!(s.parse::<DeviceChoice>().unwrap(), d);
        assert_eq!(d.to_string(), s);
    }
    assert_eq!(
        "gpu".parse::<DeviceChoice>().unwrap_err().to_string(),
        "invalid device = gpu: cpu, cuda, auto"
    );
    assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
    assert_eq!(
        "fp16".parse::<Precision>().unwrap_err().to_string(),
        "invalid precision = fp16: fp32, bf16"
    );
    // In a run config: a misspelt value is a serde error naming the variants.
    let err = toml::from_str::<crate::config::RunConfig>("device = \"gpu\"\n").unwrap_err();
    assert!(err.to_string().contains("unknown variant `gpu`"), "{err}");
    let c: crate::config::RunConfig =
        toml::from_str("device = \"auto\"\nprecision = \"bf16\"\n").unwrap();
    assert_eq!(
        (c.device, c.precision),
        (DeviceChoice::Auto, Precision::Bf16)
    );
}

#[test]
fn the_default_device_leaves_the_config_hash_unchanged() {
    let c = crate::config::RunConfig::default();
    let json = serde_json::to_value(&c).unwrap();
    assert!(json.get("device").is_none() && json.get("precision").is_none());
    let mut g = c.clone();
    g.device = DeviceChoice::Cuda;
    assert_ne!(g.run_hash(), c.run_hash(), "a GPU run is another run");
    let mut b = c.clone();
    b.precision = Precision::Bf16;
    assert_ne!(b.run_hash(), c.run_hash());
}

#[test]
fn cpu_always_resolves_and_cuda_without_a_gpu_is_a_one_line_error() {
    let r = resolve(DeviceChoice::Cpu, 3).unwrap();
    assert_eq!((r.device, r.note), (Device::Cpu, None));
    match cuda::availability() {
        Err(why) => {
            let e = resolve(DeviceChoice::Cuda, 0).unwrap_err();
            assert_eq!(e.field, "device");
            assert_eq!(e.value, "cuda");
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{msg}");
            assert!(
                msg.contains(&why) && msg.contains("use device = cpu or auto"),
                "{msg}"
            );
            let a = resolve(DeviceChoice::Auto, 0).unwrap();
            assert_eq!(a.device, Device::Cpu);
            let note = a.note.expect("auto says what it picked");
            assert!(note.starts_with("device auto: no usable CUDA") && note.ends_with("using cpu"));
        }
        Ok(gpus) => {
            // On a GPU machine: site i on cuda:(i mod gpus), and auto says so.
            assert_eq!(
                resolve(DeviceChoice::Cuda, gpus + 1).unwrap().device,
                Device::Cuda(1 % gpus)
            );
            let a = resolve(DeviceChoice::Auto, 0).unwrap();
            assert_eq!(a.device, Device::Cuda(0));
            assert!(a.note.unwrap().contains("using cuda"));
        }
    }
}

#[test]
fn the_runtime_is_per_thread_and_restored_on_leaving() {
    assert_eq!(current(), Runtime::CPU);
    let staged = Runtime {
        stage_payloads: true,
        precision: Precision::Bf16,
        ..Runtime::CPU
    };
    {
        let _g = enter(staged);
        assert_eq!(current(), staged);
        // Another thread still sees the default.
        std::thread::spawn(|| assert_eq!(current(), Runtime::CPU))
            .join()
            .unwrap();
        {
            let _inner = enter(Runtime::CPU);
            assert_eq!(current(), Runtime::CPU);
        }
        assert_eq!(current(), staged);
    }
    assert_eq!(current(), Runtime::CPU);
    assert!(Runtime::new(Device::Cuda(0), Precision::Fp32).stage_payloads);
    assert!(!Runtime::new(Device::Cpu, Precision::Fp32).stage_payloads);
}

fn values(n: usize) -> Vec<f32> {
    let mut rng = crate::rng::Rng::new(11);
    (0..n)
        .map(|i| (rng.normal() as f32) * if i % 7 == 0 { 1e3 } else { 1e-2 })
        .collect()
}

#[test]
fn staged_payloads_are_copied_exactly_and_encode_to_the_same_bytes() {
    let v = values(1000);
    let direct: Vec<Vec<u8>> = WireDtype::ALL.iter().map(|&w| encode(w, &v)).collect();
    let _g = enter(Runtime {
        stage_payloads: true,
        ..Runtime::CPU
    });
    let mut t = upload_f32(&v).view([10, 100]);
    let t_ptr = t.data_ptr() as usize;
    let mut seen_ptr = 0usize;
    let staged = with_host_f32(&mut t, |host| {
        seen_ptr = host.as_ptr() as usize;
        let bytes: Vec<Vec<u8>> = WireDtype::ALL.iter().map(|&w| encode(w, host)).collect();
        // The collective's result is written in host memory ...
        for x in host.iter_mut() {
            *x = -*x * 0.5;
        }
        bytes
    });
    assert_ne!(
        seen_ptr, t_ptr,
        "staging was forced: the slice must be the host buffer"
    );
    assert_eq!(
        staged, direct,
        "bytes identical to encoding the tensor's own values"
    );
    // ... and lands back in the tensor, shape kept.
    assert_eq!(t.size(), vec![10, 100]);
    let back = tensor_to_vec(&t);
    assert!(back
        .iter()
        .zip(&v)
        .all(|(b, x)| b.to_bits() == (-x * 0.5).to_bits()));
    // The buffer is reused for a smaller payload and grown for a larger one.
    let mut small = upload_f32(&v[..10]);
    with_host_f32(&mut small, |h| assert_eq!(h.len(), 10));
    let mut large = upload_f32(&values(3000));
    with_host_f32(&mut large, |h| assert_eq!(h.len(), 3000));
}

#[test]
fn host_tensors_are_lent_in_place_unless_staging_is_asked_for() {
    let mut t = upload_f32(&values(64));
    let ptr = t.data_ptr() as usize;
    let seen = with_host_f32(&mut t, |h| h.as_ptr() as usize);
    assert_eq!(seen, ptr, "a contiguous CPU tensor needs no copy");
    // A non-contiguous one is staged even on the CPU, and written back in its layout.
    let base = upload_f32(&values(64)).view([8, 8]);
    let mut tr = base.transpose(0, 1);
    let before = tensor_to_vec(&tr);
    with_host_f32(&mut tr, |h| {
        assert_eq!(h, before.as_slice());
        h.iter_mut().for_each(|x| *x += 1.0);
    });
    let after = tensor_to_vec(&base.transpose(0, 1));
    assert!(after.iter().zip(&before).all(|(a, b)| *a == b + 1.0));
}

#[test]
fn uploads_land_on_the_threads_device() {
    let t = upload_i64(&[1, 2, 3, 4, 5, 6], &[2, 3]);
    assert_eq!(
        (t.device(), t.kind(), t.size()),
        (Device::Cpu, Kind::Int64, vec![2, 3])
    );
    let z = Tensor::zeros([2], (Kind::Float, device()));
    assert_eq!(z.device(), Device::Cpu);
}

#[test]
fn libtorch_is_located_from_the_process_maps_and_its_version_read() {
    let maps = "7f00-7f01 r-xp 00000000 08:01 123 /opt/t/lib/libc10.so\n\
                7f02-7f03 r-xp 00000000 08:01 124 /opt/torch/lib/libtorch_cpu.so\n";
    assert_eq!(
        cuda::maps_libtorch_dir(maps),
        Some(std::path::PathBuf::from("/opt/torch/lib"))
    );
    assert_eq!(
        cuda::maps_libtorch_dir("7f00-7f01 r-xp 0 0 0 [heap]\n"),
        None
    );
    let py = "__version__ = '2.11.0+cu130'\ndebug = False\ncuda: Optional[str] = '13.0'\n";
    assert_eq!(
        facts::parse_version_py(py),
        (Some("2.11.0+cu130".into()), Some("13.0".into()))
    );
    let cpu = "__version__ = '2.13.0+cpu'\ncuda: Optional[str] = None\n";
    assert_eq!(
        facts::parse_version_py(cpu),
        (Some("2.13.0+cpu".into()), None)
    );
    // This process: the libtorch it runs on is found and has a version.
    let dir = cuda::libtorch_lib_dir().expect("libtorch_cpu.so is mapped");
    let (v, _) = facts::libtorch_version(&dir);
    assert!(v.is_some_and(|v| v.starts_with("2.")));
}

#[test]
fn peaks_are_named_only_for_known_gpus() {
    assert_eq!(
        facts::dense_peak_tflops("NVIDIA H200"),
        Some((989.5, 494.5))
    );
    assert_eq!(
        facts::dense_peak_tflops("NVIDIA H200 NVL"),
        Some((835.5, 417.5))
    );
    assert_eq!(
        facts::dense_peak_tflops("NVIDIA H100 PCIe"),
        Some((756.5, 378.0))
    );
    assert_eq!(
        facts::dense_peak_tflops("NVIDIA A100-SXM4-80GB"),
        Some((312.0, 156.0))
    );
    assert_eq!(facts::dense_peak_tflops("Tesla T4"), None);
}

#[test]
fn cpu_facts_name_the_cpu_and_how_sites_share_it() {
    let f = facts::DeviceFacts::detect(Device::Cpu, Precision::Fp32, 4, "sim");
    assert_eq!(
        (f.device.as_str(), f.gpus, f.driver.as_deref()),
        ("cpu", 0, None)
    );
    assert!(f.libtorch.is_some());
    assert!(f.sharing.starts_with("cpu: 4 site(s)"));
    let s = facts::sharing(true, 1, 4, "sim");
    assert!(s.contains("one at a time"), "{s}");
    let s = facts::sharing(true, 2, 5, "relay");
    assert!(s.contains("up to 3 per GPU"), "{s}");
}
