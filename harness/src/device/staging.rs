//! The host copy of a wire payload: device → host, the collective on host `f32` values,
//! host → device.
//!
//! Collectives work on `&mut [f32]` in host memory. A tensor already in contiguous host
//! f32 memory is handed over in place (no copy: DDP's gradient, the CPU default). Otherwise
//! (a CUDA tensor, a non-contiguous one, or any tensor when the runtime says
//! [`Runtime::stage_payloads`](super::Runtime::stage_payloads)) the values are copied into
//! the thread's staging buffer, the collective runs there, and the result is copied back.
//! The staging buffer is one f32 host tensor per thread, grown to the largest payload and
//! reused; for a CUDA tensor it is page-locked (pinned), so both copies are single DMA
//! transfers instead of going through a pageable bounce buffer. It is released when the
//! thread leaves its runtime.
//!
//! The copies are exact (f32 to f32), so the bytes a collective sends from the staged
//! values are the bytes it would send from the tensor's own memory; a test pins this with
//! `Device::Cpu` and staging forced.

use std::cell::RefCell;

use tch::{Device, Kind, Tensor};

use crate::model::params::with_f32_values;

/// A host buffer and whether it is pinned (tracked here: libtorch's `is_pinned(device)`
/// warns that its argument is deprecated).
struct Buffer {
    values: Tensor,
    pinned: bool,
}

thread_local! {
    static BUFFER: RefCell<Option<Buffer>> = const { RefCell::new(None) };
}

/// Drop the calling thread's staging buffer.
pub fn release() {
    BUFFER.with(|b| b.borrow_mut().take());
}

/// A host f32 buffer of at least `n` values, pinned for transfers with `device` when that
/// is a GPU. Taken out of the thread's slot for the duration of a use.
fn take_buffer(n: usize, device: Device) -> Buffer {
    let pinned = device.is_cuda();
    let cached = BUFFER.with(|b| b.borrow_mut().take());
    match cached {
        Some(b) if b.values.numel() >= n && b.pinned == pinned => b,
        _ => {
            let t = Tensor::empty([n as i64], (Kind::Float, Device::Cpu));
            Buffer {
                values: if pinned { t.pin_memory(device) } else { t },
                pinned,
            }
        }
    }
}

fn put_back(b: Buffer) {
    BUFFER.with(|slot| *slot.borrow_mut() = Some(b));
}

/// Whether `t` can be lent to host code as it is.
fn in_place(t: &Tensor) -> bool {
    !super::current().stage_payloads
        && t.device() == Device::Cpu
        && t.kind() == Kind::Float
        && t.is_contiguous()
}

/// Run `f` on the f32 values of `t` in host memory; what `f` writes ends up in `t`.
///
/// `t` must be an f32 tensor (of any device and layout). In place for contiguous host
/// tensors unless the runtime stages payloads; otherwise through the staging buffer.
pub fn with_host_f32<R>(t: &mut Tensor, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut host = HostCopy::new(t);
    f(&mut host)
}

/// The f32 values of a tensor as a host slice (`Deref<Target = [f32]>`), written back into
/// the tensor when dropped: the tensor's own memory for a contiguous host tensor (unless
/// the runtime stages payloads), else the thread's staging buffer filled from it.
pub struct HostCopy<'t> {
    tensor: &'t mut Tensor,
    /// `Some` when staged (copied back on drop); `None` when lent in place.
    staged: Option<(Buffer, Tensor)>,
    ptr: *mut f32,
    len: usize,
}

impl<'t> HostCopy<'t> {
    /// Lend `t` (an f32 tensor) to host code.
    pub fn new(t: &'t mut Tensor) -> Self {
        assert_eq!(t.kind(), Kind::Float, "HostCopy: an f32 tensor");
        let len = t.numel();
        if in_place(t) {
            let ptr = if len == 0 {
                std::ptr::NonNull::<f32>::dangling().as_ptr()
            } else {
                t.data_ptr() as *mut f32
            };
            return HostCopy {
                tensor: t,
                staged: None,
                ptr,
                len,
            };
        }
        let buffer = take_buffer(len, t.device());
        let mut host = buffer.values.narrow(0, 0, len as i64);
        tch::no_grad(|| host.copy_(&t.reshape([-1])));
        let ptr = with_f32_values(&mut host, |v| v.as_mut_ptr());
        HostCopy {
            tensor: t,
            staged: Some((buffer, host)),
            ptr,
            len,
        }
    }

    /// Whether the values were copied (device, layout or the runtime's request).
    pub fn is_staged(&self) -> bool {
        self.staged.is_some()
    }
}

impl std::ops::Deref for HostCopy<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: `ptr` points at `len` initialised f32 values, either the contiguous host
        // memory of `tensor` or of the staging view held in `staged`; both stay alive and
        // unaliased while `self` holds the `&mut` borrow of the tensor and owns the view.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl std::ops::DerefMut for HostCopy<'_> {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `deref`; `&mut self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for HostCopy<'_> {
    fn drop(&mut self) {
        if let Some((buffer, host)) = self.staged.take() {
            let shape = self.tensor.size();
            tch::no_grad(|| self.tensor.copy_(&host.view(shape.as_slice())));
            drop(host);
            put_back(buffer);
        }
    }
}

/// A 1-D f32 tensor holding `values` on the calling thread's device.
pub fn upload_f32(values: &[f32]) -> Tensor {
    to_current_device(Tensor::from_slice(values))
}

/// An i64 tensor of `shape` holding `values` on the calling thread's device.
pub fn upload_i64(values: &[i64], shape: &[i64]) -> Tensor {
    to_current_device(Tensor::from_slice(values).view(shape))
}

fn to_current_device(t: Tensor) -> Tensor {
    match super::device() {
        Device::Cpu => t,
        d => t.to_device(d),
    }
}
