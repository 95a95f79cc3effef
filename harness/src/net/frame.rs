//! Transport framing: how a message travels on a byte stream, and the handshake that opens
//! every connection. Framing bytes are everything on the wire that is not payload.
//!
//! **Frame**: `[u32 LE header][payload][u32 LE crc32]`. The header's low 31 bits are the
//! payload length, at most `max_frame_bytes`; bit 31 set means "the message continues in the
//! next frame", and such a frame carries exactly `max_frame_bytes` (only a message's last
//! frame is shorter). The CRC32 covers the header and the payload. A message of `p` payload bytes
//! is `max(1, ⌈p / max_frame_bytes⌉)` frames, so its framing bytes are
//! `8 · max(1, ⌈p / max_frame_bytes⌉)` (an empty message is one empty frame).
//!
//! **Handshake** (both directions, before any frame; counted as framing):
//! - `hello` = magic `FMOE`, version u16, flags u16, from-site u32, to-site u32, world u32,
//!   max_frame_bytes u32, run-id length u16, run id (≤ 128 bytes), 16-byte nonce, crc32:
//!   46 + len(run id) bytes;
//! - `proof` = SHA-256(domain ‖ token ‖ run id ‖ from ‖ to ‖ own nonce ‖ peer nonce), crc32:
//!   36 bytes. The shared token itself never travels, and a proof cannot be replayed (it binds
//!   the verifier's fresh nonce).
//!
//! So each direction of a link carries `82 + len(run id)` handshake bytes. A dialing side
//! writes its hello first and its proof first; an accepting side reads first and answers only
//! a peer that passed, so a stranger learns nothing. Both sides check run id, site ids, world
//! size, maximum frame size and the peer's proof.
//!
//! Reading never allocates more than the bytes that actually arrived (a length over the
//! maximum is refused before any allocation), never waits longer than the read timeout
//! without progress once a frame has started, and gives every started frame a deadline
//! ([`ReadPace`]: the read timeout plus its size at a minimum rate), so a peer trickling
//! bytes cannot hold a frame open; a handshake must be complete within its timeout.

use super::error::{NetError, PeerName};
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// Bytes of a frame header.
pub const FRAME_HEADER_BYTES: u64 = 4;
/// Bytes of a frame's checksum trailer.
pub const FRAME_TRAILER_BYTES: u64 = 4;
/// Framing bytes of one frame.
pub const FRAME_OVERHEAD_BYTES: u64 = FRAME_HEADER_BYTES + FRAME_TRAILER_BYTES;
/// Header bit meaning "more frames of this message follow".
pub const MORE_FLAG: u32 = 1 << 31;
/// The largest `max_frame_bytes` the header can express.
pub const MAX_FRAME_LIMIT: u32 = MORE_FLAG - 1;
/// Default maximum payload of one frame (16 MiB).
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 16 << 20;
/// Default maximum payload of one message (16 GiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 16 << 30;
/// Longest run id a hello can carry.
pub const MAX_RUN_ID_BYTES: usize = 128;

/// First bytes of every hello.
pub const MAGIC: &[u8; 4] = b"FMOE";
const VERSION: u16 = 1;
/// Bytes of a hello before the run id: magic, version, flags, from, to, world, max frame,
/// run-id length.
pub const HELLO_FIXED_BYTES: usize = 26;
/// Offset of the u16 run-id length inside the fixed part of a hello.
const HELLO_RUN_ID_LEN_AT: usize = 24;
const NONCE_BYTES: usize = 16;
/// Bytes of the crc32 that closes a hello, a proof and a frame.
const CHECKSUM_BYTES: usize = 4;
const PROOF_BYTES: usize = 32;
/// Bytes of a proof on the wire (digest + crc32).
pub const PROOF_MESSAGE_BYTES: usize = PROOF_BYTES + CHECKSUM_BYTES;
const PROOF_DOMAIN: &[u8] = b"fomoe-handshake-proof-v1";

/// The run-id length a hello's fixed part announces, when it starts with [`MAGIC`] and the
/// length is at most [`MAX_RUN_ID_BYTES`]; `None` for anything else.
pub fn hello_run_id_len(fixed: &[u8; HELLO_FIXED_BYTES]) -> Option<usize> {
    let len =
        u16::from_le_bytes([fixed[HELLO_RUN_ID_LEN_AT], fixed[HELLO_RUN_ID_LEN_AT + 1]]) as usize;
    (&fixed[..4] == MAGIC && len <= MAX_RUN_ID_BYTES).then_some(len)
}

/// The addressing fields of a hello's fixed part, for a relay that pairs connections
/// before the handshake runs end to end (it cannot check the proof, which needs the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloHead {
    pub from: u32,
    pub to: u32,
    pub world: u32,
    pub run_id_len: usize,
}

/// Parse a hello's fixed part: magic, protocol version and run-id length are checked.
pub fn parse_hello_head(fixed: &[u8; HELLO_FIXED_BYTES]) -> Result<HelloHead, String> {
    if &fixed[..4] != MAGIC {
        return Err("not a fomoe peer (bad magic)".into());
    }
    let version = u16::from_le_bytes([fixed[4], fixed[5]]);
    if version != VERSION {
        return Err(format!("protocol version {version}, expected {VERSION}"));
    }
    let run_id_len = hello_run_id_len(fixed)
        .ok_or_else(|| format!("run id longer than {MAX_RUN_ID_BYTES} bytes"))?;
    Ok(HelloHead {
        from: u32_at(fixed, 8),
        to: u32_at(fixed, 12),
        world: u32_at(fixed, 16),
        run_id_len,
    })
}

/// Bytes of a hello after its fixed part: run id, nonce, crc32.
pub fn hello_rest_bytes(run_id_len: usize) -> usize {
    run_id_len + NONCE_BYTES + CHECKSUM_BYTES
}

/// A frame header word split into (payload length, "more frames follow").
pub fn parse_frame_header(word: u32) -> (u32, bool) {
    (word & !MORE_FLAG, word & MORE_FLAG != 0)
}

/// Number of frames a message of `payload_bytes` takes.
pub fn frames_for_message(payload_bytes: u64, max_frame_bytes: u32) -> u64 {
    payload_bytes.div_ceil(max_frame_bytes.max(1) as u64).max(1)
}

/// Framing bytes of one message of `payload_bytes`: `8 · frames`.
pub fn message_framing_bytes(payload_bytes: u64, max_frame_bytes: u32) -> u64 {
    FRAME_OVERHEAD_BYTES * frames_for_message(payload_bytes, max_frame_bytes)
}

/// Handshake bytes one side sends on a link (hello + proof): `82 + len(run id)`.
pub fn handshake_bytes(run_id: &str) -> u64 {
    (HELLO_FIXED_BYTES + hello_rest_bytes(run_id.len()) + PROOF_MESSAGE_BYTES) as u64
}

/// Default [`ReadPace::min_rate_bps`]: 1 Mbit/s, below every modelled link.
pub const DEFAULT_MIN_RATE_BPS: u64 = 1_000_000;

/// How slowly a started frame may arrive.
///
/// - `stall`: the longest wait without a single new byte;
/// - deadline per frame: a frame header must be complete within `stall` of its first byte,
///   and the rest of a frame of `len` payload bytes within `stall + (len + 4)·8 /
///   min_rate_bps` of its header. Every byte counting as progress is not enough: a peer
///   sending one byte a second never stalls but never finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPace {
    pub stall: Duration,
    pub min_rate_bps: u64,
}

impl ReadPace {
    /// `stall` with the default minimum rate.
    pub fn new(stall: Duration) -> Self {
        ReadPace {
            stall,
            min_rate_bps: DEFAULT_MIN_RATE_BPS,
        }
    }

    /// The time `bytes` take at the minimum rate, plus the stall allowance.
    fn allowance(&self, bytes: u64) -> Duration {
        let rate = self.min_rate_bps.max(1) as u128;
        let ns = (bytes as u128 * 8 * 1_000_000_000).div_ceil(rate);
        self.stall + Duration::from_nanos(ns.min(u64::MAX as u128) as u64)
    }
}

/// When a [`fill`] must be done.
#[derive(Debug, Clone, Copy)]
enum Deadline {
    At(Instant),
    /// This long after the first byte arrives.
    AfterFirstByte(Duration),
}

/// Size limits a reader enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    pub max_frame_bytes: u32,
    pub max_message_bytes: u64,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
}

impl FrameLimits {
    pub fn validate(&self) -> Result<(), NetError> {
        if self.max_frame_bytes == 0 || self.max_frame_bytes > MAX_FRAME_LIMIT {
            return Err(NetError::Config(format!(
                "max_frame_bytes {} must be between 1 and {MAX_FRAME_LIMIT}",
                self.max_frame_bytes
            )));
        }
        Ok(())
    }
}

/// Writes one message as frames. Returns the framing bytes written.
pub fn write_message<W: Write>(w: &mut W, payload: &[u8], max_frame_bytes: u32) -> io::Result<u64> {
    let max = max_frame_bytes.clamp(1, MAX_FRAME_LIMIT) as usize;
    let mut frames = 0u64;
    let mut rest = payload;
    loop {
        let take = rest.len().min(max);
        let (part, tail) = rest.split_at(take);
        let mut header = take as u32;
        if !tail.is_empty() {
            header |= MORE_FLAG;
        }
        let header = header.to_le_bytes();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        crc.update(part);
        w.write_all(&header)?;
        w.write_all(part)?;
        w.write_all(&crc.finalize().to_le_bytes())?;
        frames += 1;
        rest = tail;
        if rest.is_empty() {
            break;
        }
    }
    Ok(frames * FRAME_OVERHEAD_BYTES)
}

/// What `fill` found.
enum Fill {
    Full,
    /// End of stream before the first byte (only reported when `idle_ok`).
    Eof,
}

/// Reads exactly `buf.len()` bytes. A timeout with no progress is tolerated only while
/// `idle_ok` and nothing has been read (waiting for the next message); otherwise it is a
/// stall. End of stream before the first byte is `Eof` when `idle_ok`, else truncation.
/// Past `deadline` (checked after every read) it fails with [`NetError::TooSlow`].
#[allow(clippy::too_many_arguments)]
fn fill<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    idle_ok: bool,
    peer: &PeerName,
    what: &'static str,
    done_before: u64,
    want_total: u64,
    read_timeout: Duration,
    deadline: Deadline,
) -> Result<Fill, NetError> {
    let started = Instant::now();
    let mut got = 0usize;
    let mut last_progress = started;
    let mut until = match deadline {
        Deadline::At(t) => Some(t),
        Deadline::AfterFirstByte(_) => None,
    };
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => {
                if idle_ok && got == 0 {
                    return Ok(Fill::Eof);
                }
                return Err(NetError::Truncated {
                    peer: peer.clone(),
                    what,
                    got: done_before + got as u64,
                    want: want_total,
                });
            }
            Ok(n) => {
                if got == 0 {
                    if let Deadline::AfterFirstByte(d) = deadline {
                        until = Some(Instant::now() + d);
                    }
                }
                got += n;
                last_progress = Instant::now();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if idle_ok && got == 0 {
                    last_progress = Instant::now();
                    continue;
                }
                if last_progress.elapsed() >= read_timeout {
                    return Err(NetError::Stalled {
                        peer: peer.clone(),
                        what,
                        got: done_before + got as u64,
                        want: want_total,
                        timeout: read_timeout,
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(NetError::Truncated {
                    peer: peer.clone(),
                    what,
                    got: done_before + got as u64,
                    want: want_total,
                })
            }
            Err(e) => return Err(NetError::io(peer, "read", &e)),
        }
        if let Some(t) = until {
            if got < buf.len() && Instant::now() > t {
                return Err(NetError::TooSlow {
                    peer: peer.clone(),
                    what,
                    got: done_before + got as u64,
                    want: want_total,
                    elapsed: started.elapsed(),
                });
            }
        }
    }
    Ok(Fill::Full)
}

/// A message read by [`read_message`], with its framing bytes.
#[derive(Debug)]
pub struct ReadMessage {
    pub payload: Vec<u8>,
    pub framing_bytes: u64,
}

/// Reads one message (one or more frames) at [`ReadPace::new`]`(read_timeout)`.
pub fn read_message<R: Read>(
    r: &mut R,
    limits: FrameLimits,
    peer: &PeerName,
    read_timeout: Duration,
) -> Result<Option<ReadMessage>, NetError> {
    read_message_paced(r, limits, peer, ReadPace::new(read_timeout))
}

/// Reads one message (one or more frames). `Ok(None)` is a clean end of stream at a message
/// boundary. The stream's own read timeout (if any) is the granularity of stall detection;
/// `pace` says how long a started frame may take ([`ReadPace`]).
pub fn read_message_paced<R: Read>(
    r: &mut R,
    limits: FrameLimits,
    peer: &PeerName,
    pace: ReadPace,
) -> Result<Option<ReadMessage>, NetError> {
    let read_timeout = pace.stall;
    let mut payload: Vec<u8> = Vec::new();
    let mut framing = 0u64;
    let mut first = true;
    loop {
        let mut header = [0u8; 4];
        let header_deadline = if first {
            Deadline::AfterFirstByte(read_timeout)
        } else {
            Deadline::At(Instant::now() + read_timeout)
        };
        match fill(
            r,
            &mut header,
            first,
            peer,
            "frame header",
            0,
            4,
            read_timeout,
            header_deadline,
        )? {
            Fill::Eof => return Ok(None),
            Fill::Full => {}
        }
        first = false;
        let (len, more) = parse_frame_header(u32::from_le_bytes(header));
        let len = len as u64;
        if len > limits.max_frame_bytes as u64 {
            return Err(NetError::FrameTooLong {
                peer: peer.clone(),
                len,
                max: limits.max_frame_bytes as u64,
            });
        }
        // Every frame but a message's last is full (see `write_message`): so a message of
        // p bytes is exactly ⌈p / max⌉ frames, and a peer cannot keep one message open
        // for ever with empty continued frames.
        if more && len != limits.max_frame_bytes as u64 {
            return Err(NetError::ShortContinuedFrame {
                peer: peer.clone(),
                len,
                max: limits.max_frame_bytes as u64,
            });
        }
        let total = payload.len() as u64 + len;
        if total > limits.max_message_bytes {
            return Err(NetError::MessageTooLong {
                peer: peer.clone(),
                len: total,
                max: limits.max_message_bytes,
            });
        }
        let frame_deadline =
            Deadline::At(Instant::now() + pace.allowance(len + FRAME_TRAILER_BYTES));
        // Grow with the bytes that actually arrive, in steps of at most 4 MiB (or doubling).
        let start = payload.len();
        let end = start + len as usize;
        let mut pos = start;
        while pos < end {
            let step = (end - pos).min((4usize << 20).max(pos - start));
            payload.resize(pos + step, 0);
            fill(
                r,
                &mut payload[pos..pos + step],
                false,
                peer,
                "frame",
                (pos - start) as u64 + 4,
                len + 8,
                read_timeout,
                frame_deadline,
            )?;
            pos += step;
        }
        let mut trailer = [0u8; 4];
        fill(
            r,
            &mut trailer,
            false,
            peer,
            "frame",
            len + 4,
            len + 8,
            read_timeout,
            frame_deadline,
        )?;
        let received = u32::from_le_bytes(trailer);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header);
        crc.update(&payload[start..end]);
        let computed = crc.finalize();
        if received != computed {
            return Err(NetError::BadChecksum {
                peer: peer.clone(),
                len,
                received,
                computed,
            });
        }
        framing += FRAME_OVERHEAD_BYTES;
        if !more {
            return Ok(Some(ReadMessage {
                payload,
                framing_bytes: framing,
            }));
        }
    }
}

/// The shared secret of a run: 32 random bytes, written as 64 hex digits.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(pub [u8; 32]);

impl Token {
    /// A fresh random token (from the OS).
    pub fn generate() -> Self {
        let mut t = [0u8; 32];
        random_bytes(&mut t);
        Token(t)
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(text: &str) -> Result<Self, NetError> {
        let bad = || NetError::Config("token must be 64 hex digits".into());
        if text.len() != 64 || !text.is_ascii() {
            return Err(bad());
        }
        let mut t = [0u8; 32];
        for (i, byte) in t.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Token(t))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl serde::Serialize for Token {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Token {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Token::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

/// Fills `buf` from the OS random source; falls back to hashing time, pid and a counter.
pub(crate) fn random_bytes(buf: &mut [u8]) {
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        if f.read_exact(buf).is_ok() {
            return;
        }
    }
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut filled = 0;
    while filled < buf.len() {
        let mut h = Sha256::new();
        h.update(format!("{:?}", std::time::SystemTime::now()).as_bytes());
        h.update(std::process::id().to_le_bytes());
        h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
        let d = h.finalize();
        let n = (buf.len() - filled).min(d.len());
        buf[filled..filled + n].copy_from_slice(&d[..n]);
        filled += n;
    }
}

/// Who this side is, and what it expects of the peer.
#[derive(Debug, Clone)]
pub struct HandshakeParams<'a> {
    pub run_id: &'a str,
    pub me: usize,
    pub world: usize,
    pub token: &'a Token,
    pub max_frame_bytes: u32,
}

/// Which peer a handshake may complete with.
#[derive(Debug, Clone, Copy)]
pub enum Expect<'a> {
    /// We dialed this site: write first.
    Dialed(usize),
    /// We accepted a connection that may come from any of these sites: read first.
    Accepted(&'a [usize]),
}

#[derive(Debug)]
struct Hello {
    from: u32,
    to: u32,
    world: u32,
    max_frame_bytes: u32,
    run_id: String,
    nonce: [u8; NONCE_BYTES],
}

fn encode_hello(h: &Hello) -> Vec<u8> {
    let mut v = Vec::with_capacity(HELLO_FIXED_BYTES + hello_rest_bytes(h.run_id.len()));
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&VERSION.to_le_bytes());
    v.extend_from_slice(&0u16.to_le_bytes());
    v.extend_from_slice(&h.from.to_le_bytes());
    v.extend_from_slice(&h.to.to_le_bytes());
    v.extend_from_slice(&h.world.to_le_bytes());
    v.extend_from_slice(&h.max_frame_bytes.to_le_bytes());
    v.extend_from_slice(&(h.run_id.len() as u16).to_le_bytes());
    v.extend_from_slice(h.run_id.as_bytes());
    v.extend_from_slice(&h.nonce);
    let crc = crc32fast::hash(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    v
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn read_hello<R: Read>(r: &mut R, peer: &PeerName, timeout: HsTime) -> Result<Hello, NetError> {
    let hs = |reason: String| NetError::Handshake {
        peer: peer.clone(),
        reason,
    };
    let mut fixed = [0u8; HELLO_FIXED_BYTES];
    handshake_fill(r, &mut fixed, peer, timeout)?;
    if &fixed[..4] != MAGIC {
        return Err(hs("not a fomoe peer (bad magic)".into()));
    }
    let version = u16::from_le_bytes([fixed[4], fixed[5]]);
    if version != VERSION {
        return Err(hs(format!(
            "protocol version {version}, expected {VERSION}"
        )));
    }
    let Some(run_id_len) = hello_run_id_len(&fixed) else {
        return Err(hs(format!("run id longer than {MAX_RUN_ID_BYTES} bytes")));
    };
    let mut rest = vec![0u8; hello_rest_bytes(run_id_len)];
    handshake_fill(r, &mut rest, peer, timeout)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&fixed);
    crc.update(&rest[..run_id_len + NONCE_BYTES]);
    if crc.finalize() != u32_at(&rest, run_id_len + NONCE_BYTES) {
        return Err(hs("bad checksum in hello".into()));
    }
    let run_id = String::from_utf8(rest[..run_id_len].to_vec())
        .map_err(|_| hs("run id is not UTF-8".into()))?;
    let mut nonce = [0u8; NONCE_BYTES];
    nonce.copy_from_slice(&rest[run_id_len..run_id_len + NONCE_BYTES]);
    Ok(Hello {
        from: u32_at(&fixed, 8),
        to: u32_at(&fixed, 12),
        world: u32_at(&fixed, 16),
        max_frame_bytes: u32_at(&fixed, 20),
        run_id,
        nonce,
    })
}

/// The time a whole handshake may take: its length, and the instant it ends.
#[derive(Debug, Clone, Copy)]
struct HsTime {
    total: Duration,
    deadline: Instant,
}

fn handshake_fill<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    peer: &PeerName,
    time: HsTime,
) -> Result<(), NetError> {
    let timeout = time.total;
    let left = time
        .deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    match fill(
        r,
        buf,
        false,
        peer,
        "handshake",
        0,
        buf.len() as u64,
        left,
        Deadline::At(time.deadline),
    ) {
        Ok(_) => Ok(()),
        Err(NetError::TooSlow { .. }) => Err(NetError::Handshake {
            peer: peer.clone(),
            reason: format!("handshake not complete within {timeout:?}"),
        }),
        Err(NetError::Truncated { .. }) => Err(NetError::Handshake {
            peer: peer.clone(),
            reason: "connection closed during the handshake (wrong token, run id or site?)".into(),
        }),
        Err(NetError::Stalled { .. }) => Err(NetError::Handshake {
            peer: peer.clone(),
            reason: format!("no handshake within {timeout:?}"),
        }),
        Err(e) => Err(e),
    }
}

fn proof(
    token: &Token,
    run_id: &str,
    from: u32,
    to: u32,
    prover_nonce: &[u8],
    verifier_nonce: &[u8],
) -> [u8; PROOF_BYTES] {
    let mut h = Sha256::new();
    h.update(PROOF_DOMAIN);
    h.update(token.0);
    h.update((run_id.len() as u32).to_le_bytes());
    h.update(run_id.as_bytes());
    h.update(from.to_le_bytes());
    h.update(to.to_le_bytes());
    h.update(prover_nonce);
    h.update(verifier_nonce);
    h.finalize().into()
}

fn encode_proof(p: &[u8; PROOF_BYTES]) -> Vec<u8> {
    let mut v = p.to_vec();
    v.extend_from_slice(&crc32fast::hash(p).to_le_bytes());
    v
}

fn read_proof<R: Read>(
    r: &mut R,
    peer: &PeerName,
    timeout: HsTime,
) -> Result<[u8; PROOF_BYTES], NetError> {
    let mut buf = [0u8; PROOF_MESSAGE_BYTES];
    handshake_fill(r, &mut buf, peer, timeout)?;
    if crc32fast::hash(&buf[..PROOF_BYTES]) != u32_at(&buf, PROOF_BYTES) {
        return Err(NetError::Handshake {
            peer: peer.clone(),
            reason: "bad checksum in proof".into(),
        });
    }
    let mut p = [0u8; PROOF_BYTES];
    p.copy_from_slice(&buf[..PROOF_BYTES]);
    Ok(p)
}

/// Runs the handshake on a connected stream (whose read timeout should be short, e.g.
/// ≤ 100 ms, so `timeout` is honoured); the whole handshake must end within `timeout`. Returns the verified peer site and the bytes
/// written and read (both equal to [`handshake_bytes`] on success).
pub fn handshake<S: Read + Write>(
    stream: &mut S,
    params: &HandshakeParams<'_>,
    expect: Expect<'_>,
    addr: &str,
    timeout: Duration,
) -> Result<usize, NetError> {
    let mut peer = match expect {
        Expect::Dialed(site) => PeerName::site(site, addr),
        Expect::Accepted(_) => PeerName::stranger(addr),
    };
    if params.run_id.len() > MAX_RUN_ID_BYTES {
        return Err(NetError::Config(format!(
            "run id of {} bytes exceeds {MAX_RUN_ID_BYTES}",
            params.run_id.len()
        )));
    }
    // One deadline for the whole handshake, however slowly its bytes arrive.
    let time = HsTime {
        total: timeout,
        deadline: Instant::now() + timeout,
    };
    let mut nonce = [0u8; NONCE_BYTES];
    random_bytes(&mut nonce);
    let mine = |to: usize| Hello {
        from: params.me as u32,
        to: to as u32,
        world: params.world as u32,
        max_frame_bytes: params.max_frame_bytes,
        run_id: params.run_id.to_string(),
        nonce,
    };
    let write = |s: &mut S, bytes: &[u8], peer: &PeerName| -> Result<(), NetError> {
        s.write_all(bytes)
            .and_then(|_| s.flush())
            .map_err(|e| NetError::io(peer, "handshake write", &e))
    };
    let check = |theirs: &Hello, peer: &PeerName| -> Result<(), NetError> {
        let hs = |reason: String| NetError::Handshake {
            peer: peer.clone(),
            reason,
        };
        if theirs.run_id != params.run_id {
            return Err(hs(format!(
                "run id `{}`, expected `{}`",
                theirs.run_id, params.run_id
            )));
        }
        if theirs.to as usize != params.me {
            return Err(hs(format!(
                "addressed to site {}, this is site {}",
                theirs.to, params.me
            )));
        }
        if theirs.world as usize != params.world {
            return Err(hs(format!(
                "world of {} sites, expected {}",
                theirs.world, params.world
            )));
        }
        if theirs.max_frame_bytes != params.max_frame_bytes {
            return Err(hs(format!(
                "max frame size {} bytes, expected {}",
                theirs.max_frame_bytes, params.max_frame_bytes
            )));
        }
        Ok(())
    };
    let verify =
        |theirs: &Hello, got: &[u8; PROOF_BYTES], peer: &PeerName| -> Result<(), NetError> {
            let want = proof(
                params.token,
                params.run_id,
                theirs.from,
                params.me as u32,
                &theirs.nonce,
                &nonce,
            );
            let diff = want
                .iter()
                .zip(got.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff != 0 {
                return Err(NetError::Handshake {
                    peer: peer.clone(),
                    reason: "wrong token (proof mismatch)".into(),
                });
            }
            Ok(())
        };
    match expect {
        Expect::Dialed(site) => {
            write(stream, &encode_hello(&mine(site)), &peer)?;
            let theirs = read_hello(stream, &peer, time)?;
            if theirs.from as usize != site {
                return Err(NetError::Handshake {
                    peer: peer.clone(),
                    reason: format!("claims to be site {}, expected site {site}", theirs.from),
                });
            }
            check(&theirs, &peer)?;
            let p = proof(
                params.token,
                params.run_id,
                params.me as u32,
                site as u32,
                &nonce,
                &theirs.nonce,
            );
            write(stream, &encode_proof(&p), &peer)?;
            let got = read_proof(stream, &peer, time)?;
            verify(&theirs, &got, &peer)?;
            Ok(site)
        }
        Expect::Accepted(allowed) => {
            let theirs = read_hello(stream, &peer, time)?;
            let site = theirs.from as usize;
            peer = PeerName {
                site: None,
                addr: format!("{addr} claiming site {site}"),
            };
            if !allowed.contains(&site) {
                return Err(NetError::Handshake {
                    peer,
                    reason: format!(
                        "site {site} is not expected to connect here (expected one of {allowed:?})"
                    ),
                });
            }
            check(&theirs, &peer)?;
            write(stream, &encode_hello(&mine(site)), &peer)?;
            let got = read_proof(stream, &peer, time)?;
            verify(&theirs, &got, &peer)?;
            let p = proof(
                params.token,
                params.run_id,
                params.me as u32,
                site as u32,
                &nonce,
                &theirs.nonce,
            );
            write(stream, &encode_proof(&p), &PeerName::site(site, addr))?;
            Ok(site)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn peer() -> PeerName {
        PeerName::site(1, "test")
    }

    fn limits(max_frame_bytes: u32) -> FrameLimits {
        FrameLimits {
            max_frame_bytes,
            max_message_bytes: 1 << 20,
        }
    }

    #[test]
    fn messages_round_trip_across_frame_splits() {
        for (len, max) in [
            (0usize, 16u32),
            (1, 16),
            (16, 16),
            (17, 16),
            (100, 7),
            (1000, 1000),
        ] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut wire = Vec::new();
            let framing = write_message(&mut wire, &payload, max).unwrap();
            assert_eq!(framing, message_framing_bytes(len as u64, max));
            assert_eq!(wire.len() as u64, len as u64 + framing);
            let mut r = Cursor::new(wire);
            let m = read_message(&mut r, limits(max), &peer(), Duration::from_secs(1))
                .unwrap()
                .unwrap();
            assert_eq!(m.payload, payload);
            assert_eq!(m.framing_bytes, framing);
            assert!(
                read_message(&mut r, limits(max), &peer(), Duration::from_secs(1))
                    .unwrap()
                    .is_none()
            );
        }
    }

    #[test]
    fn frame_over_maximum_is_refused_before_allocating() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&(MAX_FRAME_LIMIT).to_le_bytes());
        let e = read_message(
            &mut Cursor::new(wire),
            limits(1024),
            &peer(),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            matches!(e, NetError::FrameTooLong { len, max: 1024, .. } if len == MAX_FRAME_LIMIT as u64),
            "{e}"
        );
        assert!(e.to_string().starts_with("site 1 (test)"), "{e}");
    }

    #[test]
    fn message_over_maximum_is_refused() {
        let mut wire = Vec::new();
        for _ in 0..3 {
            // Frames of 512 bytes, "more" set: the third pushes the message past 1 KiB.
            wire.extend_from_slice(&(512u32 | MORE_FLAG).to_le_bytes());
            wire.extend_from_slice(&[0u8; 512]);
            let mut crc = crc32fast::Hasher::new();
            crc.update(&(512u32 | MORE_FLAG).to_le_bytes());
            crc.update(&[0u8; 512]);
            wire.extend_from_slice(&crc.finalize().to_le_bytes());
        }
        let lim = FrameLimits {
            max_frame_bytes: 512,
            max_message_bytes: 1024,
        };
        let e =
            read_message(&mut Cursor::new(wire), lim, &peer(), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, NetError::MessageTooLong { .. }), "{e}");
    }

    /// Empty continued frames (the "more" bit on a zero-length frame), repeated, would keep
    /// one message open for ever without growing it: a continued frame must be full.
    #[test]
    fn a_short_continued_frame_is_refused() {
        let mut wire = Vec::new();
        for _ in 0..3 {
            let header = MORE_FLAG.to_le_bytes();
            wire.extend_from_slice(&header);
            wire.extend_from_slice(&crc32fast::hash(&header).to_le_bytes());
        }
        let e = read_message(
            &mut Cursor::new(wire),
            limits(64),
            &peer(),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                NetError::ShortContinuedFrame {
                    len: 0,
                    max: 64,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn corrupted_and_truncated_frames_are_detected() {
        let mut wire = Vec::new();
        write_message(&mut wire, b"hello world", 64).unwrap();
        let mut bad = wire.clone();
        bad[6] ^= 0x40;
        let e = read_message(
            &mut Cursor::new(bad),
            limits(64),
            &peer(),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(e, NetError::BadChecksum { len: 11, .. }), "{e}");
        for cut in 1..wire.len() {
            let e = read_message(
                &mut Cursor::new(wire[..cut].to_vec()),
                limits(64),
                &peer(),
                Duration::from_secs(1),
            )
            .unwrap_err();
            assert!(matches!(e, NetError::Truncated { .. }), "cut {cut}: {e}");
        }
    }

    #[test]
    fn token_hex_round_trips_and_is_redacted() {
        let t = Token::generate();
        assert_eq!(Token::from_hex(&t.to_hex()).unwrap(), t);
        assert!(!format!("{t:?}").contains(&t.to_hex()[..8]));
        assert!(Token::from_hex("zz").is_err());
        assert_ne!(Token::generate(), t);
    }

    #[test]
    fn handshake_byte_count_matches_encoding() {
        let h = Hello {
            from: 0,
            to: 1,
            world: 2,
            max_frame_bytes: 64,
            run_id: "abc".into(),
            nonce: [0; 16],
        };
        let p = encode_proof(&[0; 32]);
        assert_eq!(
            (encode_hello(&h).len() + p.len()) as u64,
            handshake_bytes("abc")
        );
        assert_eq!(handshake_bytes(""), 82);
    }
}
