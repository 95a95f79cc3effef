//! Where a site's tensors live and at what precision: the run's runtime context.
//!
//! One place holds the device, so no device argument is threaded through the model, the
//! optimiser or the strategies: a site enters its [`Runtime`] once ([`enter`]) on the thread
//! that trains it, and every tensor the harness creates for that site
//! ([`crate::model::params::ParamStore`], AdamW moments, batches, residency masks) is created
//! on [`device()`]. The runtime is thread-local because `sim` runs the M sites as threads of
//! one process; a thread that entered nothing is on the CPU at fp32, which is what every
//! test, the orchestrator and Photon's aggregator (host arithmetic only) use.
//!
//! **Knob `device`** (every method and command): `cpu` (default), `cuda`, `auto`.
//! - `cuda` needs libtorch's CUDA library to load and at least one visible GPU; otherwise
//!   it is a one-line error before anything runs (see [`cuda::availability`]).
//! - `auto` is `cuda` when that holds and `cpu` otherwise, and says which ([`Resolved::note`]).
//! - Site i of a run uses `cuda:(i mod n)` with n visible GPUs ([`resolve`]).
//!
//! **Sharing one GPU.** On `sim` the sites are threads of one process with one CUDA context
//! per device; the compute gate then admits one site at a time (each computes alone on its
//! GPU, as `sim` assumes exclusive compute, and the measured time is that of a site alone).
//! On `relay`/`netns` each site is a worker process with its own CUDA context; sites placed
//! on the same GPU time-slice it (no MPS), so their measured compute times include that
//! sharing. The manifest records which ([`facts::DeviceFacts::sharing`]).
//!
//! **Knob `precision`**: `fp32` (default) or `bf16`: mixed precision in the manner of bf16
//! autocast, written out explicitly because libtorch's C API sets autocast on but not its
//! dtype (CUDA's default is f16): the matmul inputs of attention (qkv, projection), of the
//! experts and of the output head are cast to bf16 and those matmuls run in bf16 with fp32
//! accumulation; norms, softmax, router logits, gates, the residual stream, losses, master
//! weights, gradients and AdamW state stay fp32 (gradients reach the fp32 weights through
//! the casts). It runs on any device; it pays off where bf16 matmuls are fast (GPUs), not
//! on a CPU without bf16 units.
//!
//! **Host copies.** Only the wire payload leaves the device: collectives encode and reduce
//! host `f32` slices, so a CUDA site stages the payload through one pinned host buffer
//! ([`staging`]). The copy is f32, not the wire dtype: the ring accumulates partial sums in
//! f32 on the host and encodes each message itself, so converting on the device first would
//! change the arithmetic; with the f32 copy, bytes on the wire depend only on the values and
//! the dtype, never on the device.

pub mod cuda;
pub mod facts;
pub mod staging;

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::model::ConfigError;

/// The `device` knob as written in a config or on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    #[default]
    Cpu,
    Cuda,
    Auto,
}

impl DeviceChoice {
    pub fn name(self) -> &'static str {
        match self {
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => "cuda",
            DeviceChoice::Auto => "auto",
        }
    }
    pub fn is_cpu(&self) -> bool {
        *self == DeviceChoice::Cpu
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DeviceChoice {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda),
            "auto" => Ok(DeviceChoice::Auto),
            other => Err(ConfigError::new("device", other, "cpu, cuda, auto")),
        }
    }
}

/// The `precision` knob: fp32 everywhere, or bf16 matmuls with fp32 master state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
    pub fn is_fp32(&self) -> bool {
        *self == Precision::Fp32
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(ConfigError::new("precision", other, "fp32, bf16")),
        }
    }
}

/// What a site computes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Runtime {
    pub device: Device,
    pub precision: Precision,
    /// Copy wire payloads through the host staging buffer even when the tensor already is
    /// host memory. Always true on CUDA; on the CPU it runs the CUDA path's host/device
    /// copies with `Device::Cpu`, which is how tests exercise that code without a GPU.
    pub stage_payloads: bool,
}

impl Runtime {
    /// The CPU at fp32, payloads read in place: what a thread gets without [`enter`].
    pub const CPU: Runtime = Runtime {
        device: Device::Cpu,
        precision: Precision::Fp32,
        stage_payloads: false,
    };

    pub fn new(device: Device, precision: Precision) -> Self {
        Runtime {
            device,
            precision,
            stage_payloads: device != Device::Cpu,
        }
    }
}

impl Default for Runtime {
    fn default() -> Self {
        Runtime::CPU
    }
}

thread_local! {
    static CURRENT: Cell<Runtime> = const { Cell::new(Runtime::CPU) };
}

/// The runtime of the calling thread.
pub fn current() -> Runtime {
    CURRENT.with(Cell::get)
}

/// The device of the calling thread's tensors.
pub fn device() -> Device {
    current().device
}

/// The precision of the calling thread's matmuls.
pub fn precision() -> Precision {
    current().precision
}

/// Restores the previous runtime of its thread when dropped (not `Send`: it belongs to the
/// thread that entered).
#[must_use = "the runtime is left when the guard is dropped"]
pub struct RuntimeGuard {
    previous: Runtime,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for RuntimeGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.previous));
        staging::release();
    }
}

/// Make `rt` the calling thread's runtime until the guard drops.
pub fn enter(rt: Runtime) -> RuntimeGuard {
    let previous = CURRENT.with(|c| c.replace(rt));
    RuntimeGuard {
        previous,
        _not_send: std::marker::PhantomData,
    }
}

/// Wait for the device's queued work (CUDA kernels run asynchronously; a timer around
/// compute must include them). No-op on the CPU.
pub fn synchronize() {
    if let Device::Cuda(i) = device() {
        tch::Cuda::synchronize(i as i64);
    }
}

/// A device choice resolved on this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub device: Device,
    /// For `auto`: one line saying what it picked and why.
    pub note: Option<String>,
}

/// The device site `site` uses for `choice` on this machine (`cuda:(site mod n)` with n
/// visible GPUs). Errors, as one line naming the field, when `cuda` is asked for and not
/// usable here.
pub fn resolve(choice: DeviceChoice, site: usize) -> Result<Resolved, ConfigError> {
    match choice {
        DeviceChoice::Cpu => Ok(Resolved {
            device: Device::Cpu,
            note: None,
        }),
        DeviceChoice::Cuda => match cuda::availability() {
            Ok(gpus) => Ok(Resolved {
                device: Device::Cuda(site % gpus),
                note: None,
            }),
            Err(why) => Err(ConfigError::new(
                "device",
                "cuda",
                format!("no usable CUDA device here ({why}); use device = cpu or auto"),
            )),
        },
        DeviceChoice::Auto => Ok(match cuda::availability() {
            Ok(gpus) => Resolved {
                device: Device::Cuda(site % gpus),
                note: Some(format!(
                    "device auto: CUDA is present ({gpus} GPU{}: {}), using cuda",
                    if gpus == 1 { "" } else { "s" },
                    facts::gpu_name(0).unwrap_or_else(|| "name unknown".into())
                )),
            },
            Err(why) => Resolved {
                device: Device::Cpu,
                note: Some(format!("device auto: no usable CUDA ({why}), using cpu")),
            },
        }),
    }
}

/// The name a manifest gives a device: `cpu`, `cuda:0`, ...
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests;
