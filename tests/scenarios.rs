//! Scenarios as data (issue 11): every fault kind under every method, FoMoE surviving on its
//! replicas, frozen experts, partial averages, rejoins, the deadline, determinism on `sim`
//! and the link model of a two-region matrix. `tiny` preset, `sim` unless a test is about
//! real time.

use std::path::Path;
use std::time::Duration;

use harness::config::{Fault, FaultKind, Method, OnSiteLoss, OuterOptimizer, RunConfig};
use harness::net::{Backend, Comm};
use harness::runner::{run_one, RunOptions, RunOutcome};
use harness::scenario::participation::{ParticipationRow, Status, PARTICIPATION_FILE};
use harness::telemetry::StepRow;

fn base(method: Method, sites: usize) -> RunConfig {
    let mut c = RunConfig {
        method,
        sites,
        steps: 16,
        inner_steps: 4,
        threads_per_site: Some(1),
        ..Default::default()
    };
    c.network.backend = Backend::Sim;
    c.eval_sequences = 4;
    c.fomoe.rho = 2;
    c
}

fn opts() -> RunOptions {
    RunOptions {
        worker_exe: Some(env!("CARGO_BIN_EXE_fomoe").into()),
    }
}

fn try_run(cfg: &RunConfig, dir: &Path) -> anyhow::Result<RunOutcome> {
    run_one(cfg, dir, &baselines::registry(), &opts())
}

fn run(cfg: &RunConfig, dir: &Path) -> RunOutcome {
    try_run(cfg, dir).unwrap_or_else(|e| panic!("{} run failed: {e:#}", cfg.method.name()))
}

fn rows<T: serde::de::DeserializeOwned>(p: &Path) -> Vec<T> {
    csv::Reader::from_path(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn steps(dir: &Path) -> Vec<StepRow> {
    rows(&dir.join("steps.csv"))
}

fn participation(dir: &Path) -> Vec<ParticipationRow> {
    rows(&dir.join(PARTICIPATION_FILE))
}

fn status(p: &[ParticipationRow], round: usize, site: usize) -> Status {
    p.iter()
        .find(|r| r.round == round && r.site == site)
        .unwrap_or_else(|| panic!("no row for round {round} site {site}"))
        .status
}

fn fault(kind: FaultKind, site: usize) -> Fault {
    Fault {
        kind,
        site,
        ..Default::default()
    }
}

fn losses(r: &[StepRow]) -> Vec<(usize, usize, u64)> {
    r.iter()
        .map(|x| (x.step, x.site, x.loss.to_bits()))
        .collect()
}

fn ckpt(dir: &Path, name: &str) -> harness::checkpoint::Checkpoint {
    harness::checkpoint::Checkpoint::open(&dir.join(name)).unwrap()
}

/// The documented outcome of every fault kind under every method (the closing table of
/// issue 11): a loss fails DDP and DiLoCo by default and is survived by Photon and FoMoE
/// (and by DDP and DiLoCo with `on_site_loss = "continue"`); stalls, slow sites and link
/// changes cost time and never change the loss; a deadline leaves a stalled site out of
/// its round; a rejoining site fetches the global state and trains again.
#[test]
fn every_fault_kind_and_method_gives_its_documented_outcome() {
    let d = tempfile::tempdir().unwrap();
    for m in [Method::Ddp, Method::Diloco, Method::Photon, Method::Fomoe] {
        let dir = |k: &str| d.path().join(format!("{}-{k}", m.name()));
        let clean = steps(&{
            let p = dir("clean");
            run(&base(m, 4), &p);
            p
        });
        let continues = matches!(m, Method::Photon | Method::Fomoe);

        // crash at step 6 (round 1, after one step of it).
        let mut c = base(m, 4);
        c.faults = vec![Fault {
            at_step: Some(6),
            ..fault(FaultKind::Crash, 1)
        }];
        let p = dir("crash");
        match try_run(&c, &p) {
            Err(e) => {
                assert!(!continues, "{}: {e:#}", m.name());
                assert!(
                    format!("{e:#}").contains("injected fault: site 1 crashed at step 6"),
                    "{e:#}"
                );
            }
            Ok(_) => assert!(
                continues,
                "{} must fail on a lost site by default",
                m.name()
            ),
        }
        c.on_site_loss = Some(OnSiteLoss::Continue);
        let p = dir("crash-continue");
        run(&c, &p);
        let part = participation(&p);
        assert_eq!(status(&part, 0, 1), Status::Participant);
        assert_eq!(status(&part, 1, 1), Status::Crashed, "{}", m.name());
        let crashed_row = part.iter().find(|r| r.round == 1 && r.site == 1).unwrap();
        assert_eq!(crashed_row.steps_trained, 1, "trained step 5 only");
        for r in 2..4 {
            assert_eq!(status(&part, r, 1), Status::Absent);
            for s in [0, 2, 3] {
                assert_eq!(status(&part, r, s), Status::Participant);
            }
        }
        let st = steps(&p);
        assert!(st.iter().all(|r| r.site != 1 || r.step <= 5));
        assert_eq!(st.iter().filter(|r| r.site == 0).count(), 16);
        // The lost site's steps before the crash equal the fault-free run's.
        let before: Vec<_> = losses(&st).into_iter().filter(|x| x.0 <= 5).collect();
        let clean_before: Vec<_> = losses(&clean).into_iter().filter(|x| x.0 <= 5).collect();
        assert_eq!(before, clean_before);

        // stall of 3 s before step 6, no deadline: everyone waits, the loss is unchanged.
        let mut c = base(m, 4);
        c.faults = vec![Fault {
            at_step: Some(6),
            duration: Some("3s".into()),
            ..fault(FaultKind::Stall, 2)
        }];
        let p = dir("stall");
        run(&c, &p);
        let st = steps(&p);
        assert_eq!(
            losses(&st),
            losses(&clean),
            "{}: a stall changed the loss",
            m.name()
        );
        let row =
            |s: usize, step: usize| st.iter().find(|r| r.site == s && r.step == step).unwrap();
        assert_eq!(row(2, 6).fault_ms, 3000.0);
        // The others wait for it at their next sync (DDP: the same step; others: the
        // round's end).
        let sync_step = if m == Method::Ddp { 6 } else { 8 };
        assert!(
            row(0, sync_step).comm_ms > 2500.0,
            "{}: site 0 did not wait ({} ms)",
            m.name(),
            row(0, sync_step).comm_ms
        );
        assert!(participation(&p)
            .iter()
            .all(|r| r.status == Status::Participant));

        // stall of 30 s with a 2 s deadline: the stalled site is left out of round 1 and
        // catches up; the others do not wait for it.
        if m.has_rounds() {
            let mut c = base(m, 4);
            c.round_deadline = Some("2s".into());
            c.faults = vec![Fault {
                at_step: Some(6),
                duration: Some("30s".into()),
                ..fault(FaultKind::Stall, 2)
            }];
            let p = dir("stall-deadline");
            run(&c, &p);
            let part = participation(&p);
            assert_eq!(status(&part, 1, 2), Status::Late, "{}", m.name());
            for s in [0, 1, 3] {
                assert_eq!(status(&part, 1, s), Status::Participant);
            }
            let late = part.iter().find(|r| r.round == 1 && r.site == 2).unwrap();
            assert!(
                late.recovery_recv > 0,
                "the late site fetched the global state"
            );
            let st = steps(&p);
            let end_of_round_1 = st.iter().find(|r| r.site == 0 && r.step == 8).unwrap();
            assert!(
                end_of_round_1.clock_s < 5.0,
                "{}: the round waited for the stalled site (clock {} s)",
                m.name(),
                end_of_round_1.clock_s
            );
        }

        // slow site (compute × 4 from round 1): time only.
        let mut c = base(m, 4);
        c.faults = vec![Fault {
            at_round: Some(1),
            factor: Some(4.0),
            ..fault(FaultKind::Slow, 3)
        }];
        let p = dir("slow");
        run(&c, &p);
        let st = steps(&p);
        assert_eq!(
            losses(&st),
            losses(&clean),
            "{}: a slow site changed the loss",
            m.name()
        );
        for r in st.iter().filter(|r| r.site == 3) {
            assert_eq!(
                r.fault_ms > 0.0,
                r.step > 4,
                "step {} fault {}",
                r.step,
                r.fault_ms
            );
        }

        // leave at round 1, rejoin at round 3.
        let mut c = base(m, 4);
        c.on_site_loss = Some(OnSiteLoss::Continue);
        c.checkpoint_every_rounds = Some(1);
        c.faults = vec![
            Fault {
                at_round: Some(1),
                ..fault(FaultKind::Leave, 1)
            },
            Fault {
                at_round: Some(3),
                ..fault(FaultKind::Rejoin, 1)
            },
        ];
        let p = dir("rejoin");
        run(&c, &p);
        let part = participation(&p);
        assert_eq!(status(&part, 1, 1), Status::Absent);
        assert_eq!(status(&part, 2, 1), Status::Absent);
        assert_eq!(status(&part, 3, 1), Status::Participant);
        let back = part.iter().find(|r| r.round == 3 && r.site == 1).unwrap();
        assert!(back.rejoined);
        let fetched = part.iter().find(|r| r.round == 2 && r.site == 1).unwrap();
        assert!(
            fetched.recovery_recv > 0,
            "{}: no recovery traffic",
            m.name()
        );
        let st = steps(&p);
        assert_eq!(st.iter().filter(|r| r.site == 1).count(), 8);
        assert!(st
            .iter()
            .filter(|r| r.site == 1)
            .all(|r| r.step <= 4 || r.step > 12));
        // After the last sync the returned site holds what every other holder holds.
        let a = ckpt(&p, "ckpt-site0.safetensors");
        let b = ckpt(&p, "ckpt-site1.safetensors");
        let name = "blocks.0.attn.qkv.weight";
        assert_eq!(a.all_values(name).unwrap(), b.all_values(name).unwrap());

        // link change at 0.1 s: every link of site 0 drops to 2 Mbit/s; time only.
        let mut c = base(m, 4);
        c.faults = vec![Fault {
            at_time: Some("100ms".into()),
            rate: Some("2mbit".into()),
            ..fault(FaultKind::Link, 0)
        }];
        let p = dir("link");
        run(&c, &p);
        let st = steps(&p);
        assert_eq!(
            losses(&st),
            losses(&clean),
            "{}: a link change changed the loss",
            m.name()
        );
        let comm = |r: &[StepRow]| r.iter().map(|x| x.comm_ms).sum::<f64>();
        assert!(
            comm(&st) > 2.0 * comm(&clean),
            "{}: slower links cost no time",
            m.name()
        );
    }
}

fn tiny() -> harness::model::ModelConfig {
    base(Method::Fomoe, 4).model_config().unwrap()
}

/// FoMoE with ρ = 2 over 4 sites loses site 1 at round 2: every expert keeps at least one
/// live holder and keeps training, the bytes are the partial-participation formula, and the
/// surviving holders of every expert stay bit-identical.
#[test]
fn fomoe_rho2_survives_a_lost_site_on_its_replicas() {
    let d = tempfile::tempdir().unwrap();
    let mut c = base(Method::Fomoe, 4);
    c.checkpoint_every_rounds = Some(1);
    c.faults = vec![Fault {
        at_round: Some(2),
        ..fault(FaultKind::Crash, 1)
    }];
    let dir = d.path().join("f");
    let o = run(&c, &dir);
    let m = tiny();
    let b = 4u64;
    // Total payload over all sites and rounds: per round 2(|P|−1)·N_dense·b for the dense
    // group plus Σ over experts 2(|H_e ∩ P| − 1)·n_e·b over its participating holders.
    let place = harness::strategy::ExpertPlacement::round_robin(m.n_experts, 4, 2).unwrap();
    let (nd, ne) = (m.dense_params() as u64, m.params_per_expert() as u64);
    let round_bytes = |p: &[usize]| -> u64 {
        let dense = 2 * (p.len() as u64 - 1) * nd * b;
        let experts: u64 = (0..m.n_experts)
            .map(|e| {
                let live = place.holders_of(e).iter().filter(|h| p.contains(h)).count() as u64;
                2 * live.saturating_sub(1) * ne * b
            })
            .sum();
        dense + experts * m.n_layers as u64
    };
    let expected = 2 * round_bytes(&[0, 1, 2, 3]) + 2 * round_bytes(&[0, 2, 3]);
    let measured: u64 = o.sites.iter().map(|s| s.payload_sent).sum();
    assert_eq!(measured, expected, "partial-participation bytes");
    for s in &o.sites {
        assert_eq!(s.payload_sent, s.expected_payload_sent, "site {}", s.site);
    }
    // Every expert has a live holder: none is frozen.
    let part = participation(&dir);
    let placement = harness::strategy::Placement::from_layers(&vec![place.clone(); m.n_layers], 8);
    let plan = harness::scenario::plan::Plan::new(&c).unwrap();
    let rec = harness::scenario::participation::ScenarioRecord::derive(
        &c.faults, &plan, &placement, 4, &part,
    );
    assert!(rec.frozen_experts.is_empty(), "{:?}", rec.frozen_experts);
    assert_eq!(rec.partial_rounds, vec![2, 3]);
    // Holders stay identical; the lost site's experts moved on after it left (its copy is
    // the value of its last sync).
    let cks: Vec<_> = (0..4)
        .map(|s| ckpt(&dir, &format!("ckpt-site{s}.safetensors")))
        .collect();
    for e in 0..m.n_experts {
        let live: Vec<usize> = place
            .holders_of(e)
            .iter()
            .copied()
            .filter(|&h| h != 1)
            .collect();
        for l in 0..m.n_layers {
            let name = format!("blocks.{l}.moe.experts.{e}.fc1.weight");
            let first = cks[live[0]].all_values(&name).unwrap();
            for &h in &live[1..] {
                assert_eq!(cks[h].all_values(&name).unwrap(), first, "expert ({l},{e})");
            }
            if place.holders_of(e).contains(&1) {
                assert_ne!(
                    cks[1].all_values(&format!("outer.global.{name}")).unwrap(),
                    first,
                    "expert ({l},{e}) stopped training with the lost site"
                );
            }
        }
    }
    let dense = "blocks.1.attn.proj.weight";
    let w = cks[0].all_values(dense).unwrap();
    for s in [2, 3] {
        assert_eq!(cks[s].all_values(dense).unwrap(), w);
    }
}

/// With ρ = 1 the experts of a lost site have no other holder: they stay at their last
/// global value (recorded as frozen), and the global model keeps them there.
#[test]
fn with_rho_1_a_lost_sites_experts_are_frozen_at_their_last_global_value() {
    let d = tempfile::tempdir().unwrap();
    let mut c = base(Method::Fomoe, 4);
    c.fomoe.rho = 1;
    c.checkpoint_every_rounds = Some(1);
    c.faults = vec![Fault {
        at_round: Some(2),
        ..fault(FaultKind::Crash, 1)
    }];
    let dir = d.path().join("f");
    run(&c, &dir);
    let m = tiny();
    let place = harness::strategy::ExpertPlacement::round_robin(m.n_experts, 4, 1).unwrap();
    let lost = place.held[1].clone();
    assert_eq!(lost, vec![2, 3]);
    let placement = harness::strategy::Placement::from_layers(&vec![place.clone(); m.n_layers], 8);
    let plan = harness::scenario::plan::Plan::new(&c).unwrap();
    let rec = harness::scenario::participation::ScenarioRecord::derive(
        &c.faults,
        &plan,
        &placement,
        4,
        &participation(&dir),
    );
    let frozen: Vec<(usize, usize, Vec<usize>)> = rec
        .frozen_experts
        .iter()
        .map(|f| (f.layer, f.expert, f.rounds.clone()))
        .collect();
    let want: Vec<_> = (0..m.n_layers)
        .flat_map(|l| lost.iter().map(move |&e| (l, e, vec![2, 3])))
        .collect();
    assert_eq!(frozen, want);
    // The global model the evaluator assembled at the end holds the lost experts at the
    // value of the lost site's last sync (its own global copy), and the other experts as
    // trained on.
    let global = ckpt(&dir, harness::runner::round_end::GLOBAL_CHECKPOINT);
    let lost_site = ckpt(&dir, "ckpt-site1.safetensors");
    let live_site = ckpt(&dir, "ckpt-site0.safetensors");
    for l in 0..m.n_layers {
        for e in 0..m.n_experts {
            let name = format!("blocks.{l}.moe.experts.{e}.fc2.weight");
            let g = global.all_values(&name).unwrap();
            if lost.contains(&e) {
                assert_eq!(
                    g,
                    lost_site
                        .all_values(&format!("outer.global.{name}"))
                        .unwrap()
                );
                assert_eq!(
                    g,
                    lost_site.all_values(&name).unwrap(),
                    "crashed at a round start: no local work"
                );
            } else if place.held[0].contains(&e) {
                assert_eq!(g, live_site.all_values(&name).unwrap());
            }
        }
    }
}

/// Four sites, site 1 absent: the outer sync over the participants {0, 2, 3} gives exactly
/// the mean of their pseudo-gradients (FedAvg, lr 1: θ_g ← mean of the participants' θ).
#[test]
fn a_partial_participation_average_equals_the_mean_over_participants_exactly() {
    use harness::strategy::group_sync::{groups_for_site, outer_sync};
    use harness::strategy::outer::OuterOptimizerState;
    let m = tiny();
    let links = base(Method::Diloco, 4).link_matrix().unwrap();
    let comms = harness::net::sim::sim_comms(&links, &Default::default()).unwrap();
    let participants = [0usize, 2, 3];
    let values = [1.0f32, 2.0, 4.0, 8.0];
    let results: Vec<Option<Vec<f32>>> = std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(site, mut comm)| {
                let m = m.clone();
                s.spawn(move || {
                    if !participants.contains(&site) {
                        return None;
                    }
                    let residency = harness::model::Residency::full(&m);
                    let store = harness::model::ParamStore::zeros(&m, residency);
                    let mut outer =
                        OuterOptimizerState::new(OuterOptimizer::Fedavg { lr: 1.0 }, &store.flat);
                    let mut store = store;
                    store.load_flat(&vec![values[site]; store.numel()]);
                    let model = harness::model::MoeModel::from_store(&m, store);
                    let inner =
                        harness::optim::AdamW::new(Default::default(), model.store.numel(), 0..0);
                    let mut st = harness::strategy::SiteState {
                        site,
                        sites: 4,
                        model,
                        inner,
                    };
                    let groups = groups_for_site(&st.model.store.layout, &participants, |_, _| {
                        participants.to_vec()
                    });
                    outer_sync(&mut st, &mut outer, &groups, &mut comm, Default::default())
                        .unwrap();
                    assert_eq!(comm.link_counters()[1].payload_bytes_sent, 0);
                    Some(harness::model::params::tensor_to_vec(&outer.global))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mean = (values[0] + values[2] + values[3]) / 3.0;
    for (site, r) in results.iter().enumerate() {
        match r {
            Some(v) => assert!(
                v.iter().all(|x| x.to_bits() == mean.to_bits()),
                "site {site}: {} vs {mean}",
                v[0]
            ),
            None => assert_eq!(site, 1),
        }
    }
}

/// A site after recovery: its model, global copy and outer momentum (flat), and its model
/// by parameter name.
type SiteBuffers = (Vec<f32>, Vec<f32>, Vec<f32>, Vec<(String, Vec<f32>)>);

/// A site coming back gets the current global state of what it holds: the model and global
/// copy of each part from the lowest participating holder (with the outer momentum), and,
/// for a part no participant holds, its own last global value.
#[test]
fn a_rejoin_equals_a_fresh_fetch_of_the_global_state() {
    use harness::strategy::outer::OuterOptimizerState;
    let m = tiny();
    let place = harness::strategy::ExpertPlacement::round_robin(m.n_experts, 4, 2).unwrap();
    let placement = harness::strategy::Placement::from_layers(&vec![place.clone(); m.n_layers], 8);
    let links = base(Method::Fomoe, 4).link_matrix().unwrap();
    let comms = harness::net::sim::sim_comms(&links, &Default::default()).unwrap();
    // Participants {0, 3}; site 1 comes back; site 2 stays away. Site 1 holds experts
    // 2, 3 (holders {0, 1}: from site 0) and 4, 5 (holders {1, 2}: nobody present: frozen).
    let participants = [0usize, 3];
    let states: Vec<SiteBuffers> = std::thread::scope(|s| {
        let hs: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(site, mut comm)| {
                let (m, placement) = (m.clone(), placement.clone());
                s.spawn(move || {
                    let store = harness::model::ParamStore::init(
                        &m,
                        placement.of(site).clone(),
                        100 + site as u64,
                    );
                    let model = harness::model::MoeModel::from_store(&m, store);
                    let inner =
                        harness::optim::AdamW::new(Default::default(), model.store.numel(), 0..0);
                    let mut st = harness::strategy::SiteState {
                        site,
                        sites: 4,
                        model,
                        inner,
                    };
                    let mut round = harness::strategy::RoundState::new(placement.clone());
                    let mut outer = OuterOptimizerState::new(
                        OuterOptimizer::Nesterov {
                            lr: 0.7,
                            momentum: 0.9,
                        },
                        &st.model.store.flat,
                    );
                    // Distinct momenta and (for the returning site) a global copy
                    // unlike its model, so a copy from the wrong place shows.
                    let n = st.model.store.numel() as i64;
                    let mom = tch::Tensor::full(
                        [n],
                        0.25 * (site as f64 + 1.0),
                        (tch::Kind::Float, tch::Device::Cpu),
                    );
                    outer.momentum = Some(mom);
                    if site == 1 {
                        outer.global =
                            tch::Tensor::full([n], -3.0, (tch::Kind::Float, tch::Device::Cpu));
                    }
                    round.outer = Some(outer);
                    harness::runner::recovery::recover(
                        &mut st,
                        &mut round,
                        &mut comm,
                        &participants,
                        &[1],
                        false,
                    )
                    .unwrap();
                    let o = round.outer.as_ref().unwrap();
                    let named = st
                        .model
                        .store
                        .layout
                        .specs
                        .iter()
                        .map(|spec| {
                            (
                                spec.name.clone(),
                                harness::model::params::tensor_to_vec(&st.model.store.flat)
                                    [spec.offset..spec.offset + spec.numel]
                                    .to_vec(),
                            )
                        })
                        .collect();
                    (
                        harness::model::params::tensor_to_vec(&st.model.store.flat),
                        harness::model::params::tensor_to_vec(&o.global),
                        harness::model::params::tensor_to_vec(o.momentum.as_ref().unwrap()),
                        named,
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let value_of = |site: usize, name: &str| -> Vec<f32> {
        states[site]
            .3
            .iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
            .clone()
    };
    let layout = harness::model::ParamLayout::new(&m, placement.of(1));
    let (model1, global1, mom1, _) = &states[1];
    assert_eq!(
        model1, global1,
        "model = global copy after the fetch, except frozen parts"
    );
    for spec in &layout.specs {
        let got = &model1[spec.offset..spec.offset + spec.numel];
        let got_mom = &mom1[spec.offset..spec.offset + spec.numel];
        let expert = spec
            .name
            .split('.')
            .nth(4)
            .and_then(|e| e.parse::<usize>().ok());
        match expert {
            Some(e) if place.holders_of(e) == [1, 2] => {
                assert!(
                    got.iter().all(|&v| v == -3.0),
                    "{}: frozen: own global copy",
                    spec.name
                );
                assert!(
                    got_mom.iter().all(|&v| v == 0.5),
                    "{}: own momentum kept",
                    spec.name
                );
            }
            _ => {
                // Dense and experts 2, 3: from site 0, the lowest participant holding them.
                assert_eq!(got, value_of(0, &spec.name).as_slice(), "{}", spec.name);
                assert!(
                    got_mom.iter().all(|&v| v == 0.25),
                    "{}: momentum of site 0",
                    spec.name
                );
            }
        }
    }
}

/// Two runs of one scenario on `sim` write the same files, timings aside.
#[test]
fn sim_runs_of_one_scenario_are_identical_timings_aside() {
    let d = tempfile::tempdir().unwrap();
    let mut c = base(Method::Fomoe, 4);
    c.steps = 24;
    c.round_deadline = Some("5s".into());
    c.faults = vec![
        Fault {
            at_step: Some(6),
            duration: Some("12s".into()),
            ..fault(FaultKind::Stall, 2)
        },
        Fault {
            at_round: Some(2),
            factor: Some(2.0),
            ..fault(FaultKind::Slow, 3)
        },
        Fault {
            at_round: Some(1),
            ..fault(FaultKind::Leave, 1)
        },
        Fault {
            at_round: Some(4),
            ..fault(FaultKind::Rejoin, 1)
        },
        Fault {
            at_time: Some("1s".into()),
            peer: Some(3),
            delay: Some("150ms".into()),
            ..fault(FaultKind::Link, 0)
        },
    ];
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    run(&c, &a);
    run(&c, &b);
    let timing = [
        "data_ms",
        "compute_ms",
        "comm_ms",
        "comm_cpu_ms",
        "opt_ms",
        "wall_ms",
        "clock_s",
        "fault_ms",
        "sync_ms",
        "ready_s",
    ];
    let table = |p: &Path| -> Vec<Vec<String>> {
        let mut r = csv::Reader::from_path(p).unwrap();
        let keep: Vec<usize> = r
            .headers()
            .unwrap()
            .iter()
            .enumerate()
            .filter(|(_, h)| !timing.contains(h))
            .map(|(i, _)| i)
            .collect();
        r.records()
            .map(|rec| {
                let rec = rec.unwrap();
                keep.iter().map(|&i| rec[i].to_string()).collect()
            })
            .collect()
    };
    for f in ["steps.csv", "rounds.csv", PARTICIPATION_FILE] {
        assert_eq!(table(&a.join(f)), table(&b.join(f)), "{f}");
    }
    for s in 0..4 {
        let f = format!("probe-site{s}.jsonl");
        assert_eq!(
            std::fs::read(a.join(&f)).unwrap(),
            std::fs::read(b.join(&f)).unwrap(),
            "{f}"
        );
    }
    // The scenario did what it says.
    let part = participation(&a);
    assert_eq!(status(&part, 1, 2), Status::Late);
    assert_eq!(status(&part, 1, 1), Status::Absent);
    assert!(part
        .iter()
        .any(|r| r.round == 4 && r.site == 1 && r.rejoined));
}

/// A stalled site past the deadline does not hold the round: on the real clock (relay,
/// worker processes) the others finish the round's sync without it, long before it wakes,
/// and the run completes.
#[test]
fn a_deadline_never_hangs_on_a_stalled_site() {
    let d = tempfile::tempdir().unwrap();
    let mut c = base(Method::Diloco, 3);
    c.network.backend = Backend::Relay;
    c.network.scenario = Some("lan".into());
    c.steps = 8;
    c.round_deadline = Some("1s".into());
    c.faults = vec![Fault {
        at_step: Some(2),
        duration: Some("6s".into()),
        ..fault(FaultKind::Stall, 2)
    }];
    let dir = d.path().join("relay");
    let t = std::time::Instant::now();
    run(&c, &dir);
    assert!(t.elapsed() < Duration::from_secs(120));
    let part = participation(&dir);
    assert_eq!(status(&part, 0, 2), Status::Late);
    assert_eq!(status(&part, 0, 0), Status::Participant);
    assert_eq!(status(&part, 0, 1), Status::Participant);
    let st = steps(&dir);
    let at = |s: usize, step: usize| {
        st.iter()
            .find(|r| r.site == s && r.step == step)
            .unwrap()
            .clock_s
    };
    // Site 2 wakes after 6 s (step 2 ends then); sites 0 and 1 ended round 0 (step 4) before.
    assert!(at(2, 2) >= 6.0, "the stall lasted {} s", at(2, 2));
    assert!(
        at(1, 4) < at(2, 2) - 2.0,
        "site 1 waited: {} vs {}",
        at(1, 4),
        at(2, 2)
    );
}

/// Two sites in one region and two across an ocean: every link carries a message in the
/// time the link model predicts, serialisation at the pair's rate plus its delay.
#[test]
fn a_two_region_link_matrix_gives_the_per_link_times_of_the_link_model() {
    let text = r#"
        method = "diloco"
        sites = 4
        [network]
        backend = "sim"
        [network.topology]
        kind = "regions"
        regions = { eu = [0, 1], us = [2, 3] }
        within = { rate = "10gbit", delay = "1ms" }
        between = [ { regions = ["eu", "us"], link = { rate = "1gbit", delay = "40ms" }, directed = true },
                    { regions = ["us", "eu"], link = { rate = "200mbit", delay = "40ms" }, directed = true } ]
    "#;
    let c: RunConfig = toml::from_str(text).unwrap();
    c.validate().unwrap();
    let m = c.link_matrix().unwrap();
    let schedule = c.net_schedule().unwrap();
    let payload = 1_000_000u64;
    let framing = harness::net::frame::message_framing_bytes(
        payload,
        harness::net::frame::DEFAULT_MAX_FRAME_BYTES,
    );
    for (from, to) in [(0, 1), (0, 2), (2, 0), (3, 2), (1, 3)] {
        // Fresh endpoints: both clocks at 0, every link idle.
        let mut comms =
            harness::net::sim::sim_comms_scheduled(&schedule, &Default::default()).unwrap();
        let link = m.get(from, to).unwrap();
        comms[from].send(to, vec![7u8; payload as usize]).unwrap();
        comms[to].recv(from).unwrap();
        let want = link.serialisation_time(payload + framing) + link.delay;
        assert_eq!(comms[to].now(), want, "{from} → {to} ({link})");
    }
    let want = |from, to| m.get(from, to).unwrap().rate_bps;
    assert_eq!(want(0, 2), 1_000_000_000);
    assert_eq!(want(2, 0), 200_000_000, "asymmetric: us → eu");
    assert_eq!(want(0, 1), 10_000_000_000);
}

fn fomoe_cli(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fomoe"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Bad scenarios are refused before anything runs, in one line naming the field.
#[test]
fn bad_scenarios_get_one_line_errors_before_anything_runs() {
    let d = tempfile::tempdir().unwrap();
    let head = "method = \"fomoe\"\npreset = \"tiny\"\nsites = 4\nsteps = 16\ninner_steps = 4\n[network]\nbackend = \"sim\"\n";
    let unsorted = d.path().join("unsorted.csv");
    std::fs::write(&unsorted, "time_s,*\n0,10mbit\n5,1mbit\n2,2mbit\n").unwrap();
    let negative = d.path().join("negative.csv");
    std::fs::write(&negative, "time_s,*\n0,10mbit\n-3,1mbit\n").unwrap();
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{head}[[faults]]\nkind = \"crash\"\nsite = 4\nat_step = 3\n"),
            "invalid faults[0].site = 4: must be below sites = 4",
        ),
        (
            format!("{head}[[faults]]\nkind = \"leave\"\nsite = 1\nat_round = 4\n"),
            "invalid faults[0].at_round = 4: must be below the run's 4 rounds",
        ),
        (
            format!("{head}[[faults]]\nkind = \"crash\"\nsite = 1\nat_step = 17\n"),
            "faults[0].at_step = 17",
        ),
        (
            format!("{head}[[faults]]\nkind = \"leave\"\nsite = 1\nat_round = 1\n[[faults]]\nkind = \"crash\"\nsite = 1\nat_step = 7\n"),
            "faults[1].kind = crash: site 1 is already lost",
        ),
        (
            format!("{head}[[faults]]\nkind = \"rejoin\"\nsite = 1\nat_round = 2\n"),
            "site 1 is not absent",
        ),
        (
            format!("{head}[[faults]]\nkind = \"leave\"\nsite = 1\nat_round = 1\n[[faults]]\nkind = \"crash\"\nsite = 1\nat_round = 1\n"),
            "contradicts faults[0]",
        ),
        (
            format!("{head}[[faults]]\nkind = \"leave\"\nsite = 1\nat_round = 1\n[[faults]]\nkind = \"stall\"\nsite = 1\nat_step = 9\nduration = \"1s\"\n"),
            "site 1 does not train step 9",
        ),
        (
            format!("{head}[network.trace]\nfile = \"/nonexistent/trace.csv\"\n"),
            "/nonexistent/trace.csv",
        ),
        (
            format!("{head}[network.trace]\nfile = \"{}\"\n", unsorted.display()),
            "times must increase",
        ),
        (
            format!("{head}[network.trace]\nfile = \"{}\"\n", negative.display()),
            "negative",
        ),
        (
            format!("{head}[network.topology]\nkind = \"matrix\"\nlinks = [[\"-\", \"lan\"], [\"lan\", \"-\"]]\n"),
            "link matrix is 2×2, the run has 4 endpoints",
        ),
        (
            format!("{head}[network.topology]\nkind = \"regions\"\nregions = {{ eu = [0, 1, 2, 3], us = [] }}\nwithin = \"lan\"\n"),
            "region `us` has no site",
        ),
        (
            format!("{head}[network.topology]\nkind = \"regions\"\nregions = {{ eu = [0, 1], us = [2, 3] }}\nwithin = \"lan\"\nbetween = [{{ regions = [\"eu\", \"asia\"], link = \"internet\" }}]\n"),
            "region `asia` is not defined",
        ),
        (
            "method = \"ddp\"\npreset = \"tiny\"\nsites = 4\nround_deadline = \"5s\"\n".to_string(),
            "invalid round_deadline = 5s: applies to diloco, photon and fomoe",
        ),
        (
            "method = \"diloco\"\npreset = \"tiny\"\nsites = 4\n[network]\nbackend = \"relay\"\n[[faults]]\nkind = \"link\"\nsite = 0\nat_time = \"1s\"\nrate = \"1mbit\"\n".to_string(),
            "link changes are emulated on network.backend = sim only",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let p = d.path().join(format!("c{i}.toml"));
        std::fs::write(&p, text).unwrap();
        let out = d.path().join(format!("out{i}"));
        let (code, err) = fomoe_cli(&[
            "run-one",
            p.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 1, "case {i}: {err}");
        assert!(
            err.contains(needle),
            "case {i}: expected `{needle}` in: {err}"
        );
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "case {i}: one line: {err}"
        );
        assert!(!out.join("steps.csv").exists(), "case {i}: nothing may run");
    }
}
