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
//! `DECISION` = `b'D'` + round + participant bit mask (sites < 64) + the deadline instant
//! in ns of run clock (each u64 LE), 25 bytes; counted as control traffic.
//!
//! A site left out learns how late it was from the deadline instant: when its clock after
//! catching up is already past `deadline + round_deadline` (the earliest the next round's
//! deadline can fall), it would miss the next round whatever it does, so it skips that
//! round's training (it catches up in time, as a real site would by fetching the newest
//! state on waking) until it can make a deadline again; it tells the leader with `SKIP(r)`
//! (`b'S'` + round, 9 bytes), which never counts as taking part, in time or not.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::net::Comm;

const READY: u8 = b'R';
const SKIP: u8 = b'S';
const DECISION: u8 = b'D';

fn message(tag: u8, words: &[u64]) -> Vec<u8> {
    let mut m = vec![tag];
    for w in words {
        m.extend_from_slice(&w.to_le_bytes());
    }
    m
}

/// A site's report for a round: in time or not, it takes part (`READY`) or says it will
/// not (`SKIP`).
fn parse_report(from: usize, msg: &[u8]) -> Result<(bool, usize)> {
    let tag = msg.first().copied().unwrap_or(0);
    let t = if tag == SKIP { SKIP } else { READY };
    Ok((tag == READY, parse(from, t, msg, 1)?[0] as usize))
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

/// A present site's report that it will not take part in `round` (too far behind).
pub fn send_skip(comm: &mut dyn Comm, leader: usize, round: usize) -> Result<()> {
    comm.send(leader, message(SKIP, &[round as u64]))
        .with_context(|| format!("deadline: skip report to site {leader}"))
}

/// The leader's side: the participants of `round` among `present` (the leader itself
/// included iff `self_in_time`), told to every site of `notify`. `owed[s]`: reports of
/// earlier rounds site `s` sent (or will send) after their deadline and this leader has not
/// read yet; they come first from `s` and are skipped, and a site found late now owes one
/// more.
pub fn lead(
    comm: &mut dyn Comm,
    round: usize,
    until: Duration,
    self_in_time: Option<bool>,
    present: &[usize],
    notify: &[usize],
    owed: &mut BTreeMap<usize, usize>,
) -> Result<Vec<usize>> {
    let me = comm.rank();
    let mut participants = Vec::new();
    let mut late = Vec::new();
    for &s in present {
        if s == me {
            if self_in_time == Some(true) {
                participants.push(s);
            }
            continue;
        }
        loop {
            let msg = comm
                .recv_until(s, until)
                .with_context(|| format!("deadline: waiting for site {s}"))?;
            let Some(msg) = msg else {
                late.push(s);
                break;
            };
            let (ready, r) = parse_report(s, &msg)?;
            if r == round {
                if ready {
                    participants.push(s);
                }
                break;
            }
            if r > round {
                bail!("deadline: site {s} reported round {r} during round {round}");
            }
            take_owed(owed, s, r)?;
        }
    }
    if participants.is_empty() {
        // Nobody in time: the round waits for one report, the leader's own when it is a
        // present site, else the lowest present site's.
        if present.contains(&me) && self_in_time.is_some() {
            participants.push(me);
        } else if let Some(&s) = present.first() {
            loop {
                let msg = comm
                    .recv(s)
                    .with_context(|| format!("deadline: waiting for site {s}"))?;
                let (_, r) = parse_report(s, &msg)?;
                if r == round {
                    break;
                }
                take_owed(owed, s, r)?;
            }
            late.retain(|&x| x != s);
            participants.push(s);
        }
    }
    for s in late {
        *owed.entry(s).or_default() += 1;
    }
    participants.sort_unstable();
    let mask = participants.iter().fold(0u64, |m, &s| m | (1 << s));
    let until_ns = until.as_nanos() as u64;
    for &s in notify {
        if s != me {
            comm.send(s, message(DECISION, &[round as u64, mask, until_ns]))
                .with_context(|| format!("deadline: decision to site {s}"))?;
        }
    }
    Ok(participants)
}

fn take_owed(owed: &mut BTreeMap<usize, usize>, s: usize, r: usize) -> Result<()> {
    match owed.get_mut(&s) {
        Some(n) if *n > 0 => {
            *n -= 1;
            Ok(())
        }
        _ => bail!("deadline: site {s} sent an unexpected report of round {r}"),
    }
}

/// Read the late reports `site` owes this site (they precede anything else it sends here).
pub fn drain_owed(
    comm: &mut dyn Comm,
    owed: &mut BTreeMap<usize, usize>,
    site: usize,
) -> Result<()> {
    for _ in 0..owed.remove(&site).unwrap_or(0) {
        let msg = comm
            .recv_untimed(site)
            .with_context(|| format!("deadline: a late report of site {site}"))?;
        parse_report(site, &msg)?;
    }
    Ok(())
}

/// The leader's decision as every other site receives it.
pub struct Decision {
    pub participants: Vec<usize>,
    /// The round's deadline on the run clock.
    pub until: Duration,
}

/// Every other site's side: the leader's decision for `round`.
pub fn await_decision(comm: &mut dyn Comm, leader: usize, round: usize) -> Result<Decision> {
    let msg = comm
        .recv(leader)
        .with_context(|| format!("deadline: waiting for the decision of site {leader}"))?;
    let w = parse(leader, DECISION, &msg, 3)?;
    if w[0] as usize != round {
        bail!("deadline: decision for round {} during round {round}", w[0]);
    }
    Ok(Decision {
        participants: (0..64).filter(|s| w[1] & (1 << s) != 0).collect(),
        until: Duration::from_nanos(w[2]),
    })
}
