//! The straggler deadline of a round: who reported in time, decided by one leader and told
//! to everyone, so all sites average over the same participants.
//!
//! Round r opens at the leader's clock `open` (the start of its round); the deadline is
//! `open + round_deadline`. Every present site sends the leader `READY(r)` when its local
//! phase ends; the leader takes the reports that arrive by the deadline
//! ([`Comm::recv_until`]: a late report stays queued and is skipped as stale in a later
//! round), counts itself in when its own local phase ended in time, and sends
//! `DECISION(r, participants)` to every other endpoint it names. A round with a late site
//! therefore ends its wait at the deadline: it never hangs on a straggler. At least one
//! site takes part: when none reports in time, the round waits for the leader's own report
//! (a site) or the lowest present site's (Photon's aggregator).
//!
//! The leader is the lowest site present at the round's end (Photon's aggregator in star
//! mode, which gathers the uploads). Messages: `READY` = `b'R'` + round (u64 LE), 9 bytes;
//! `DECISION` = `b'D'` + round (u64 LE) + participant bit mask (u64 LE, sites < 64), 17
//! bytes; counted as control traffic.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::net::Comm;

const READY: u8 = b'R';
const DECISION: u8 = b'D';

fn message(tag: u8, words: &[u64]) -> Vec<u8> {
    let mut m = vec![tag];
    for w in words {
        m.extend_from_slice(&w.to_le_bytes());
    }
    m
}

fn parse(from: usize, tag: u8, msg: &[u8], words: usize) -> Result<Vec<u64>> {
    if msg.len() != 1 + 8 * words || msg[0] != tag {
        bail!(
            "site {from}: expected a {} message of {} bytes, got {} bytes",
            tag as char,
            1 + 8 * words,
            msg.len()
        );
    }
    Ok(msg[1..]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

/// A present site's report that its local phase of `round` is done.
pub fn send_ready(comm: &mut dyn Comm, leader: usize, round: usize) -> Result<()> {
    comm.send(leader, message(READY, &[round as u64]))
        .with_context(|| format!("deadline: ready report to site {leader}"))
}

/// The leader's side: the participants of `round` among `present` (the leader itself
/// included iff `self_in_time`), told to every site of `notify`.
pub fn lead(
    comm: &mut dyn Comm,
    round: usize,
    until: Duration,
    self_in_time: Option<bool>,
    present: &[usize],
    notify: &[usize],
) -> Result<Vec<usize>> {
    let me = comm.rank();
    let mut participants = Vec::new();
    for &s in present {
        if s == me {
            if self_in_time == Some(true) {
                participants.push(s);
            }
            continue;
        }
        // Skip reports of earlier rounds this site sent after their deadline.
        while let Some(msg) = comm
            .recv_until(s, until)
            .with_context(|| format!("deadline: waiting for site {s}"))?
        {
            let r = parse(s, READY, &msg, 1)?[0] as usize;
            if r == round {
                participants.push(s);
                break;
            }
            if r > round {
                bail!("deadline: site {s} reported round {r} during round {round}");
            }
        }
    }
    if participants.is_empty() {
        // Nobody in time: the round waits for one report, the leader's own when it is a
        // present site, else the lowest present site's.
        match self_in_time {
            Some(_) if present.contains(&me) => participants.push(me),
            _ => {
                if let Some(&s) = present.first() {
                    loop {
                        let msg = comm
                            .recv(s)
                            .with_context(|| format!("deadline: waiting for site {s}"))?;
                        if parse(s, READY, &msg, 1)?[0] as usize == round {
                            break;
                        }
                    }
                    participants.push(s);
                }
            }
        }
    }
    participants.sort_unstable();
    let mask = participants.iter().fold(0u64, |m, &s| m | (1 << s));
    for &s in notify {
        if s != me {
            comm.send(s, message(DECISION, &[round as u64, mask]))
                .with_context(|| format!("deadline: decision to site {s}"))?;
        }
    }
    Ok(participants)
}

/// Every other site's side: the leader's decision for `round`.
pub fn await_decision(comm: &mut dyn Comm, leader: usize, round: usize) -> Result<Vec<usize>> {
    let msg = comm
        .recv(leader)
        .with_context(|| format!("deadline: waiting for the decision of site {leader}"))?;
    let w = parse(leader, DECISION, &msg, 2)?;
    if w[0] as usize != round {
        bail!("deadline: decision for round {} during round {round}", w[0]);
    }
    Ok((0..64).filter(|s| w[1] & (1 << s) != 0).collect())
}
