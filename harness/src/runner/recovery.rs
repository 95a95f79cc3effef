//! Recovery: after a round's sync, every recipient (a site the deadline left out of this
//! round, or a site coming back at the start of the next one) fetches the current global
//! state of what it holds.
//!
//! A recipient's parts are the dense range and each expert block it holds. A part's donor
//! is the lowest-numbered participant of the round holding it; right after the sync a
//! participant's model equals the global copy, so it sends its model values, then its
//! outer momentum (Nesterov), then, where the inner optimiser is replicated (DDP), its
//! AdamW moments (the AdamW step count travels in an 8-byte header). The recipient sets
//! model and global copy to the received values and takes momentum and moments as sent.
//! A part without a participating holder (every holder absent or late: a frozen expert)
//! has no donor: the recipient sets its model to its own global copy, the last global
//! value, and sends nothing.
//!
//! Order, the same on every site: recipients ascending; for each, donors ascending; one
//! message per (donor, recipient) with the donor's parts in the recipient's layout order,
//! values as f32 on the wire ([`crate::collective::wire`]). Bytes are recovery traffic.

use std::ops::Range;

use anyhow::{bail, Context, Result};
use tch::Tensor;

use crate::collective::{wire, WireDtype};
use crate::model::params::tensor_to_vec;
use crate::model::ParamLayout;
use crate::net::Comm;
use crate::strategy::{Placement, RoundState, SiteState};

/// One part a recipient holds: the dense range or an expert block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Dense,
    Expert(usize, usize),
}

impl Part {
    fn range(self, layout: &ParamLayout) -> Range<usize> {
        match self {
            Part::Dense => layout.dense.clone(),
            Part::Expert(l, e) => layout.experts[&(l, e)].clone(),
        }
    }
}

/// The recipient's parts in its layout order, each with its donor (None: no participant
/// holds it).
fn parts_of(q: usize, placement: &Placement, participants: &[usize]) -> Vec<(Part, Option<usize>)> {
    let held = placement.of(q);
    let mut out = vec![(Part::Dense, participants.first().copied())];
    for (l, experts) in held.per_layer.iter().enumerate() {
        for &e in experts {
            let donor = placement
                .holders_of(l, e)
                .into_iter()
                .find(|h| participants.contains(h));
            out.push((Part::Expert(l, e), donor));
        }
    }
    out
}

/// Run the recovery of the module doc for this site. `replicated_inner`: the AdamW moments
/// are part of the global state (DDP). Returns how many parts this site received.
pub fn recover(
    st: &mut SiteState,
    round: &mut RoundState,
    comm: &mut dyn Comm,
    participants: &[usize],
    recipients: &[usize],
    replicated_inner: bool,
) -> Result<usize> {
    let me = st.site;
    let mut received = 0;
    for &q in recipients {
        if participants.contains(&q) {
            bail!("recovery: site {q} is both a participant and a recipient");
        }
        let parts = parts_of(q, &round.placement, participants);
        let mut donors: Vec<usize> = parts.iter().filter_map(|p| p.1).collect();
        donors.sort_unstable();
        donors.dedup();
        if me == q {
            for &d in &donors {
                let mine: Vec<Part> = parts
                    .iter()
                    .filter(|p| p.1 == Some(d))
                    .map(|p| p.0)
                    .collect();
                let msg = comm
                    .recv(d)
                    .with_context(|| format!("recovery: state from site {d}"))?;
                apply(st, round, &mine, &msg, d, replicated_inner)?;
                received += mine.len();
            }
            for p in parts.iter().filter(|p| p.1.is_none()) {
                restore_own_global(st, round, p.0);
            }
        } else if donors.contains(&me) {
            let mine: Vec<Part> = parts
                .iter()
                .filter(|p| p.1 == Some(me))
                .map(|p| p.0)
                .collect();
            comm.send(q, donation(st, round, &mine, replicated_inner))
                .with_context(|| format!("recovery: state to site {q}"))?;
        }
    }
    Ok(received)
}

/// The donor's message: step header, then model, momentum, moments over `parts`.
fn donation(st: &SiteState, round: &RoundState, parts: &[Part], replicated_inner: bool) -> Vec<u8> {
    let layout = &st.model.store.layout;
    let mut values = Vec::new();
    let mut add = |t: &Tensor| {
        for p in parts {
            let r = p.range(layout);
            values.extend(tensor_to_vec(&t.narrow(0, r.start as i64, r.len() as i64)));
        }
    };
    add(&st.model.store.flat);
    if let Some(m) = round.outer.as_ref().and_then(|o| o.momentum.as_ref()) {
        add(m);
    }
    if replicated_inner {
        add(&st.inner.exp_avg);
        add(&st.inner.exp_avg_sq);
    }
    let mut msg = st.inner.step.to_le_bytes().to_vec();
    msg.extend(wire::encode(WireDtype::F32, &values));
    msg
}

/// The recipient's side of one donor's message.
fn apply(
    st: &mut SiteState,
    round: &mut RoundState,
    parts: &[Part],
    msg: &[u8],
    donor: usize,
    replicated_inner: bool,
) -> Result<()> {
    let layout = st.model.store.layout.clone();
    let n: usize = parts.iter().map(|p| p.range(&layout).len()).sum();
    let has_momentum = round.outer.as_ref().is_some_and(|o| o.momentum.is_some());
    let copies = 1 + usize::from(has_momentum) + 2 * usize::from(replicated_inner);
    if msg.len() < 8 {
        bail!("recovery: {}-byte message from site {donor}", msg.len());
    }
    let step = u64::from_le_bytes(msg[..8].try_into().expect("8 bytes"));
    let mut values = vec![0f32; n * copies];
    wire::decode_into(WireDtype::F32, &msg[8..], &mut values).map_err(|m| {
        anyhow::anyhow!(
            "recovery: {} bytes from site {donor}, expected {}",
            m.got,
            m.want
        )
    })?;
    let mut chunks = values.chunks_exact(n);
    let fill = |t: &Tensor, vals: &[f32]| {
        let mut off = 0;
        for p in parts {
            let r = p.range(&layout);
            let v = &vals[off..off + r.len()];
            tch::no_grad(|| {
                t.narrow(0, r.start as i64, r.len() as i64)
                    .copy_(&Tensor::from_slice(v))
            });
            off += r.len();
        }
    };
    let model = chunks.next().context("recovery: model values")?;
    fill(&st.model.store.flat, model);
    if let Some(o) = round.outer.as_mut() {
        fill(&o.global, model);
        if let Some(m) = o.momentum.as_ref() {
            fill(m, chunks.next().context("recovery: momentum values")?);
        }
    }
    if replicated_inner {
        fill(
            &st.inner.exp_avg,
            chunks.next().context("recovery: AdamW m")?,
        );
        fill(
            &st.inner.exp_avg_sq,
            chunks.next().context("recovery: AdamW v")?,
        );
        st.inner.step = step;
    }
    Ok(())
}

/// A part nobody taking part holds: the model goes back to the site's own global copy.
fn restore_own_global(st: &mut SiteState, round: &RoundState, part: Part) {
    if let Some(o) = &round.outer {
        let r = part.range(&st.model.store.layout);
        let (start, len) = (r.start as i64, r.len() as i64);
        tch::no_grad(|| {
            st.model
                .store
                .flat
                .narrow(0, start, len)
                .copy_(&o.global.narrow(0, start, len))
        });
    }
}
