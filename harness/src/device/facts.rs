//! What a run computed on, for its manifest: device, name, driver, CUDA and libtorch
//! versions, precision, and how sites shared the device.
//!
//! Sources, all read at run time (so a binary built here and run against another
//! machine's libtorch reports that machine's): the libtorch version and its CUDA version
//! from the `torch/version.py` (PyPI wheel) or `build-version` (libtorch archive) beside the
//! `lib/` directory this process loaded; GPU name, driver and the driver's CUDA version from
//! NVML (`libnvidia-ml.so.1`, loaded only when a GPU is in use); the CPU's model name from
//! `/proc/cpuinfo`. A fact that cannot be read is `null`, never guessed.
//!
//! [`dense_peak_tflops`] holds the vendor's dense (no sparsity) bf16 and tf32 tensor-core
//! peaks of the GPUs this project has been lent or is likely to meet, for MFU against a
//! named peak; an unlisted GPU has none.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{device_name, Precision};

/// The device facts of one run (or of one `bench-step`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceFacts {
    /// `cpu`, `cuda:0`, ... (site 0's device; site i uses `cuda:(i mod gpus)`).
    pub device: String,
    /// GPU name (NVML) or the CPU's model name.
    pub name: Option<String>,
    /// GPUs visible to the process (0 on the CPU).
    pub gpus: usize,
    /// GPU memory in bytes (NVML, device 0).
    pub memory_bytes: Option<u64>,
    /// NVIDIA driver version.
    pub driver: Option<String>,
    /// Highest CUDA version the driver supports.
    pub cuda_driver: Option<String>,
    /// CUDA version the loaded libtorch was built with (`torch.version.cuda`).
    pub cuda_runtime: Option<String>,
    /// Version of the libtorch loaded at run time (e.g. `2.13.0+cu130`).
    pub libtorch: Option<String>,
    pub precision: Precision,
    /// How the run's sites shared the device.
    pub sharing: String,
}

impl DeviceFacts {
    /// Facts for `device` as used by `sites` sites on a network backend named `backend`.
    pub fn detect(device: tch::Device, precision: Precision, sites: usize, backend: &str) -> Self {
        let (libtorch, cuda_runtime) = super::cuda::libtorch_lib_dir()
            .map(|d| libtorch_version(&d))
            .unwrap_or((None, None));
        let on_gpu = device != tch::Device::Cpu;
        let gpus = if on_gpu {
            super::cuda::availability().unwrap_or(0)
        } else {
            0
        };
        let nvml = if on_gpu { nvml_facts() } else { None };
        let name = match &nvml {
            Some(n) => n.name.clone(),
            None if on_gpu => None,
            None => cpu_model_name(),
        };
        DeviceFacts {
            device: device_name(device),
            name,
            gpus,
            memory_bytes: nvml.as_ref().and_then(|n| n.memory_bytes),
            driver: nvml.as_ref().and_then(|n| n.driver.clone()),
            cuda_driver: nvml.as_ref().and_then(|n| n.cuda_driver.clone()),
            cuda_runtime,
            libtorch,
            precision,
            sharing: sharing(on_gpu, gpus, sites, backend),
        }
    }
}

/// One sentence on how `sites` sites share the compute device.
pub fn sharing(on_gpu: bool, gpus: usize, sites: usize, backend: &str) -> String {
    if !on_gpu {
        return format!("cpu: {sites} site(s), each with its own threads (threads_per_site)");
    }
    let per_gpu = sites.div_ceil(gpus.max(1));
    match backend {
        "sim" => format!(
            "sim: {sites} site thread(s) of one process on {} GPU(s) (site i on cuda:(i mod {})), \
             computing one at a time (compute gate 1)",
            gpus.max(1),
            gpus.max(1)
        ),
        _ => format!(
            "{backend}: {sites} worker process(es), each its own CUDA context, up to {per_gpu} \
             per GPU time-slicing it (site i on cuda:(i mod {}))",
            gpus.max(1)
        ),
    }
}

/// (libtorch version, its CUDA version) from the files beside `lib_dir`.
pub fn libtorch_version(lib_dir: &Path) -> (Option<String>, Option<String>) {
    let root = lib_dir.parent().unwrap_or(lib_dir);
    if let Ok(text) = std::fs::read_to_string(root.join("version.py")) {
        return parse_version_py(&text);
    }
    if let Ok(text) = std::fs::read_to_string(root.join("build-version")) {
        let v = text.trim().to_string();
        let cuda = v
            .split_once("+cu")
            .map(|(_, c)| c.to_string())
            .filter(|c| c.len() >= 3 && c.chars().all(|ch| ch.is_ascii_digit()))
            .map(|c| format!("{}.{}", &c[..c.len() - 1], &c[c.len() - 1..]));
        return (Some(v).filter(|v| !v.is_empty()), cuda);
    }
    (None, None)
}

/// `__version__` and `cuda` of a torch `version.py`.
pub fn parse_version_py(text: &str) -> (Option<String>, Option<String>) {
    let value = |key: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            let k = k.split(':').next()?.trim();
            (k == key).then(|| v.trim().trim_matches(|c| c == '\'' || c == '"').to_string())
        })
    };
    let cuda = value("cuda").filter(|c| c != "None" && !c.is_empty());
    (value("__version__"), cuda)
}

struct NvmlFacts {
    name: Option<String>,
    memory_bytes: Option<u64>,
    driver: Option<String>,
    cuda_driver: Option<String>,
}

fn nvml_facts() -> Option<NvmlFacts> {
    let nvml = nvml_wrapper::Nvml::builder()
        .lib_path(std::ffi::OsStr::new("libnvidia-ml.so.1"))
        .init()
        .ok()?;
    let dev = nvml.device_by_index(0).ok();
    Some(NvmlFacts {
        name: dev.as_ref().and_then(|d| d.name().ok()),
        memory_bytes: dev
            .as_ref()
            .and_then(|d| d.memory_info().ok())
            .map(|m| m.total),
        driver: nvml.sys_driver_version().ok(),
        cuda_driver: nvml
            .sys_cuda_driver_version()
            .ok()
            .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10)),
    })
}

/// The name of GPU `index` (NVML), if one can be read.
pub fn gpu_name(index: u32) -> Option<String> {
    let nvml = nvml_wrapper::Nvml::builder()
        .lib_path(std::ffi::OsStr::new("libnvidia-ml.so.1"))
        .init()
        .ok()?;
    nvml.device_by_index(index).ok()?.name().ok()
}

fn cpu_model_name() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// Dense bf16 and tf32 tensor-core peaks in TFLOP/s (vendor datasheets, without
/// sparsity) of a GPU by its NVML name; `None` for a GPU not in the table.
pub fn dense_peak_tflops(name: &str) -> Option<(f64, f64)> {
    let n = name.to_ascii_uppercase();
    // Most specific first: the NVL and PCIe parts run at lower clocks and power.
    let table: [(&str, (f64, f64)); 7] = [
        ("H200 NVL", (835.5, 417.5)),
        ("H200", (989.5, 494.5)),
        ("H100 NVL", (835.5, 417.5)),
        ("H100 PCIE", (756.5, 378.0)),
        ("H100", (989.5, 494.5)),
        ("A100", (312.0, 156.0)),
        ("L40S", (362.05, 183.0)),
    ];
    table
        .iter()
        .find(|(key, _)| n.contains(key))
        .map(|(_, peaks)| *peaks)
}
