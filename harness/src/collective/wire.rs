//! Wire encodings of f32 tensors. Values are always held and summed in f32; only messages use
//! the wire dtype. For a wire dtype with encode `Q` and decode `D`, the round trip
//! `R = D∘Q` is:
//! - `f32`: exact (4 bytes per value, little-endian);
//! - `bf16`, `f16`: round to nearest even (`half`), 2 bytes per value;
//! - `int8`: one f32 scale per message, `scale = max|x| / 127`, then
//!   `q = clamp(round(x / scale), −127, 127)` (round half away from zero), 1 byte per value;
//!   `D(q) = q · scale`. An all-zero message has scale 0 (decodes to zeros); a message with a
//!   non-finite value has scale NaN and decodes to all NaN (divergence stays visible and every
//!   site sees the same bytes).
//!
//! `R` is idempotent for f32, bf16 and f16 (`Q(R(x)) = Q(x)`); collectives never re-encode
//! decoded int8 data (they forward the received bytes), so all members see identical bytes.
//! Message sizes are [`crate::bytes::message_payload_bytes`].

use crate::bytes::message_payload_bytes;
use half::{bf16, f16};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How values travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireDtype {
    #[default]
    F32,
    Bf16,
    F16,
    Int8,
}

impl WireDtype {
    pub const ALL: [WireDtype; 4] = [
        WireDtype::F32,
        WireDtype::Bf16,
        WireDtype::F16,
        WireDtype::Int8,
    ];

    /// b of METHODS.md: bytes per value on the wire (int8: 1, plus a 4-byte scale per message).
    pub fn bytes_per_value(self) -> u64 {
        match self {
            WireDtype::F32 => 4,
            WireDtype::Bf16 | WireDtype::F16 => 2,
            WireDtype::Int8 => 1,
        }
    }

    /// Extra bytes per message (the int8 scale).
    pub fn bytes_per_message(self) -> u64 {
        match self {
            WireDtype::Int8 => 4,
            _ => 0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WireDtype::F32 => "f32",
            WireDtype::Bf16 => "bf16",
            WireDtype::F16 => "f16",
            WireDtype::Int8 => "int8",
        }
    }
}

impl fmt::Display for WireDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WireDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(WireDtype::F32),
            "bf16" => Ok(WireDtype::Bf16),
            "f16" => Ok(WireDtype::F16),
            "int8" => Ok(WireDtype::Int8),
            other => Err(format!(
                "unknown wire dtype `{other}`; allowed: f32, bf16, f16, int8"
            )),
        }
    }
}

/// A message whose length does not fit the values it should carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthMismatch {
    pub got: u64,
    pub want: u64,
}

fn int8_scale(values: &[f32]) -> f32 {
    let mut max = 0.0f32;
    for &v in values {
        if !v.is_finite() {
            return f32::NAN;
        }
        max = max.max(v.abs());
    }
    max / 127.0
}

/// Encodes `values` as one message.
pub fn encode(wire: WireDtype, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message_payload_bytes(wire, values.len()) as usize);
    match wire {
        WireDtype::F32 => {
            #[cfg(target_endian = "little")]
            {
                // SAFETY: f32 is 4 plain bytes with no padding, u8 has alignment 1, and the
                // slice covers exactly the values' memory; on little-endian targets these are
                // the little-endian wire bytes.
                let bytes = unsafe {
                    std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), values.len() * 4)
                };
                out.extend_from_slice(bytes);
            }
            #[cfg(not(target_endian = "little"))]
            for v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        WireDtype::Bf16 => {
            for v in values {
                out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes());
            }
        }
        WireDtype::F16 => {
            for v in values {
                out.extend_from_slice(&f16::from_f32(*v).to_le_bytes());
            }
        }
        WireDtype::Int8 => {
            let scale = int8_scale(values);
            out.extend_from_slice(&scale.to_le_bytes());
            if scale > 0.0 {
                for v in values {
                    out.push((v / scale).round().clamp(-127.0, 127.0) as i8 as u8);
                }
            } else {
                // Zero (all zeros) or NaN (non-finite input): every q is 0.
                out.resize(out.len() + values.len(), 0);
            }
        }
    }
    debug_assert_eq!(out.len() as u64, message_payload_bytes(wire, values.len()));
    out
}

/// Decodes `bytes` and combines each value into `out` with `f(out, decoded)`.
fn decode_with(
    wire: WireDtype,
    bytes: &[u8],
    out: &mut [f32],
    f: impl Fn(&mut f32, f32),
) -> Result<(), LengthMismatch> {
    let want = message_payload_bytes(wire, out.len());
    if bytes.len() as u64 != want {
        return Err(LengthMismatch {
            got: bytes.len() as u64,
            want,
        });
    }
    match wire {
        WireDtype::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                f(o, f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            }
        }
        WireDtype::Bf16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                f(o, bf16::from_le_bytes([c[0], c[1]]).to_f32());
            }
        }
        WireDtype::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                f(o, f16::from_le_bytes([c[0], c[1]]).to_f32());
            }
        }
        WireDtype::Int8 => {
            let scale = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            for (o, &q) in out.iter_mut().zip(&bytes[4..]) {
                f(o, (q as i8) as f32 * scale);
            }
        }
    }
    Ok(())
}

/// `out = D(bytes)`.
pub fn decode_into(wire: WireDtype, bytes: &[u8], out: &mut [f32]) -> Result<(), LengthMismatch> {
    decode_with(wire, bytes, out, |o, v| *o = v)
}

/// `acc += D(bytes)` (f32 accumulation).
pub fn decode_add(wire: WireDtype, bytes: &[u8], acc: &mut [f32]) -> Result<(), LengthMismatch> {
    decode_with(wire, bytes, acc, |o, v| *o += v)
}

/// `acc += weight · D(bytes)` (f32 multiply, then f32 add).
pub fn decode_scaled_add(
    wire: WireDtype,
    bytes: &[u8],
    weight: f32,
    acc: &mut [f32],
) -> Result<(), LengthMismatch> {
    decode_with(wire, bytes, acc, |o, v| *o += weight * v)
}

/// `values = R(values) = D(Q(values))`, what a receiver of `values` would hold.
pub fn round_trip(wire: WireDtype, values: &mut [f32]) {
    if wire == WireDtype::F32 {
        return;
    }
    let bytes = encode(wire, values);
    // The message was built for exactly these values, so its length always fits.
    let _ = decode_into(wire, &bytes, values);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_round_trip_as_documented() {
        let x = [0.0f32, 1.0, -2.5, 3.0e-3, 1000.25, -0.1];
        for wire in WireDtype::ALL {
            let bytes = encode(wire, &x);
            assert_eq!(bytes.len() as u64, message_payload_bytes(wire, x.len()));
            let mut y = [0.0f32; 6];
            decode_into(wire, &bytes, &mut y).unwrap();
            let mut z = x;
            round_trip(wire, &mut z);
            assert_eq!(y, z);
            // Idempotent where documented.
            if wire != WireDtype::Int8 {
                assert_eq!(encode(wire, &y), bytes);
            }
        }
        let mut f32s = x;
        round_trip(WireDtype::F32, &mut f32s);
        assert_eq!(f32s, x);
        let mut b = [1.0f32 + 1.0 / 256.0];
        round_trip(WireDtype::Bf16, &mut b); // ties to even: 1 + 2^-8 → 1
        assert_eq!(b, [1.0]);
    }

    #[test]
    fn int8_uses_max_abs_over_127() {
        let x = [127.0f32, -63.4, 0.5, 0.0];
        let bytes = encode(WireDtype::Int8, &x);
        assert_eq!(
            f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            1.0
        );
        assert_eq!(&bytes[4..], &[127u8, (-63i8) as u8, 1, 0]); // 0.5 rounds away from zero
        let zeros = encode(WireDtype::Int8, &[0.0, 0.0]);
        assert_eq!(zeros, vec![0, 0, 0, 0, 0, 0]);
        let mut nan = [1.0f32, f32::INFINITY];
        round_trip(WireDtype::Int8, &mut nan);
        assert!(nan.iter().all(|v| v.is_nan()));
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let mut out = [0.0f32; 3];
        assert_eq!(
            decode_into(WireDtype::F32, &[0; 11], &mut out),
            Err(LengthMismatch { got: 11, want: 12 })
        );
        assert_eq!(
            decode_add(WireDtype::Int8, &[0; 3], &mut out),
            Err(LengthMismatch { got: 3, want: 7 })
        );
    }
}
