//! A bounded TCP transfer between two sites of a lab, timed at the receiver.
//!
//! The sender writes exactly `bytes` bytes of a position-dependent pattern
//! (`byte[k] = k mod 251`) and closes; the receiver checks every byte and the count, and
//! times from the end of its first read (`t_first`, after `first_read_bytes`) to the end of
//! its last (`t_last`). Goodput is `(bytes − first_read_bytes) · 8 / (t_last − t_first)`:
//! the bytes that arrived strictly inside the timed span. Under a `tbf` of rate `R` and burst
//! `B`, the L2 bytes in that span are at most `B + R/8 · span`, so the payload bound is
//! `goodput · span ≤ (B + R/8 · span) · 8` and the steady-state goodput is
//! `R · tcp_payload_fraction(mtu)`.
//!
//! Bounded: the transfer stops at `bytes` and fails after `timeout`; it only ever connects to
//! an address of the lab.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::error::{NetnsError, Result};
use super::NetnsLab;

/// Pattern period (prime, so it never lines up with buffer sizes).
const PERIOD: usize = 251;
/// Size of one read or write: a multiple of the period.
const CHUNK: usize = PERIOD * 1024;

/// Fraction of L2 bytes that is TCP payload for full-size IPv4 segments with timestamps:
/// `(mtu − 52) / (mtu + 14)`. 0.9564 at 1500, 0.9927 at 9000.
pub fn tcp_payload_fraction(mtu_bytes: u32) -> f64 {
    (mtu_bytes as f64 - 52.0) / (mtu_bytes as f64 + 14.0)
}

/// Result of one [`measure_tcp_transfer`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TransferSample {
    /// Payload bytes delivered and verified (equals the bytes asked for).
    pub bytes: u64,
    /// Bytes of the receiver's first read, which fall before the timed span.
    pub first_read_bytes: u64,
    /// Receiver time from the end of the first read to the end of the last.
    pub span: Duration,
    /// Receiver time from accept to the last byte.
    pub total: Duration,
    /// `(bytes − first_read_bytes) · 8 / span`, payload bits per second.
    pub goodput_bps: f64,
}

fn pattern() -> Vec<u8> {
    (0..CHUNK + PERIOD).map(|k| (k % PERIOD) as u8).collect()
}

/// Sends `bytes` bytes over TCP from site `from` to site `to` of `lab` and times them at the
/// receiver; fails if the transfer takes longer than `timeout` or any byte differs.
pub fn measure_tcp_transfer(
    lab: &NetnsLab,
    from: usize,
    to: usize,
    bytes: u64,
    timeout: Duration,
) -> Result<TransferSample> {
    if from == to {
        return Err(NetnsError::Config {
            field: "to",
            value: to.to_string(),
            allowed: format!("a site other than from = {from}"),
        });
    }
    if bytes < 2 {
        return Err(NetnsError::Config {
            field: "bytes",
            value: bytes.to_string(),
            allowed: "at least 2".into(),
        });
    }
    let to_addr = lab.site_addr(to)?;
    lab.site_addr(from)?;
    let deadline = Instant::now() + timeout;
    let listener = lab
        .in_site(to, || TcpListener::bind((to_addr, 0)))?
        .map_err(|e| NetnsError::io(format!("listen on {to_addr}"), e))?;
    let port = listener
        .local_addr()
        .map_err(|e| NetnsError::io("listener address", e))?
        .port();
    listener
        .set_nonblocking(true)
        .map_err(|e| NetnsError::io("listener nonblocking", e))?;

    let receiver = std::thread::Builder::new()
        .name("netns-measure-rx".into())
        .spawn(move || receive(listener, bytes, deadline))
        .map_err(|e| NetnsError::io("spawn receiver", e))?;

    let dest = SocketAddr::from((to_addr, port));
    let sent = lab
        .in_site(from, || TcpStream::connect_timeout(&dest, timeout))?
        .map_err(|e| NetnsError::io(format!("connect to {dest}"), e))
        .and_then(|stream| send(stream, bytes, deadline));
    let received = receiver
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    // Report the receiver's error first: a sender failure is usually its consequence.
    let sample = received?;
    sent?;
    Ok(sample)
}

fn remaining(deadline: Instant) -> Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(NetnsError::Transfer("timed out".into()));
    }
    Ok(left)
}

fn send(mut stream: TcpStream, bytes: u64, deadline: Instant) -> Result<()> {
    let pat = pattern();
    let mut offset: u64 = 0;
    while offset < bytes {
        stream
            .set_write_timeout(Some(remaining(deadline)?))
            .map_err(|e| NetnsError::io("set write timeout", e))?;
        let start = (offset % PERIOD as u64) as usize;
        let n = (bytes - offset).min(CHUNK as u64) as usize;
        let written = match stream.write(&pat[start..start + n]) {
            Ok(0) => {
                return Err(NetnsError::Transfer(format!(
                    "peer closed after {offset} bytes"
                )))
            }
            Ok(w) => w,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(NetnsError::io(format!("send at byte {offset}"), e)),
        };
        offset += written as u64;
    }
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| NetnsError::io("shutdown write", e))
}

fn receive(listener: TcpListener, bytes: u64, deadline: Instant) -> Result<TransferSample> {
    let mut stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                remaining(deadline)?;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(NetnsError::io("accept", e)),
        }
    };
    drop(listener);
    stream
        .set_nonblocking(false)
        .map_err(|e| NetnsError::io("stream blocking", e))?;
    let accepted = Instant::now();
    let pat = pattern();
    let mut buf = vec![0u8; CHUNK];
    let mut got: u64 = 0;
    let mut first: Option<(Instant, u64)> = None;
    let mut last = accepted;
    loop {
        stream
            .set_read_timeout(Some(remaining(deadline)?))
            .map_err(|e| NetnsError::io("set read timeout", e))?;
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(NetnsError::Transfer(format!(
                    "timed out after {got} of {bytes} bytes"
                )))
            }
            Err(e) => return Err(NetnsError::io(format!("receive at byte {got}"), e)),
        };
        if n == 0 {
            break;
        }
        let now = Instant::now();
        if got + n as u64 > bytes {
            return Err(NetnsError::Transfer(format!(
                "received {} bytes, more than the {bytes} sent",
                got + n as u64
            )));
        }
        let start = (got % PERIOD as u64) as usize;
        if buf[..n] != pat[start..start + n] {
            let k = (0..n).find(|&k| buf[k] != pat[start + k]).unwrap_or(0);
            return Err(NetnsError::Transfer(format!(
                "byte {} differs from what was sent",
                got + k as u64
            )));
        }
        got += n as u64;
        first.get_or_insert((now, got));
        last = now;
    }
    if got != bytes {
        return Err(NetnsError::Transfer(format!(
            "stream ended after {got} of {bytes} bytes"
        )));
    }
    let (t_first, first_read_bytes) = first.unwrap_or((last, got));
    let span = last.duration_since(t_first);
    let timed = (got - first_read_bytes) as f64;
    let goodput_bps = if span.is_zero() {
        f64::INFINITY
    } else {
        timed * 8.0 / span.as_secs_f64()
    };
    Ok(TransferSample {
        bytes: got,
        first_read_bytes,
        span,
        total: last.duration_since(accepted),
        goodput_bps,
    })
}
