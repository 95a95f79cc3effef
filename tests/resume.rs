//! Resume of a multi-site run whose round state moves: FoMoE with load-aware placement
//! changes which experts each site holds after every round, so a checkpoint must carry the
//! placement (with the outer optimiser and the traffic) for the resumed run to continue
//! exactly where the interrupted one stopped.

use std::path::Path;

use harness::config::{Fault, FaultKind, Method, Placement, RunConfig};
use harness::net::Backend;
use harness::runner::{run_one, RunOptions};
use harness::telemetry::{RoundRow, StepRow};

fn rows<T: serde::de::DeserializeOwned>(p: &Path) -> Vec<T> {
    csv::Reader::from_path(p)
        .unwrap()
        .deserialize()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn resuming_a_load_aware_fomoe_run_equals_the_uninterrupted_run_bit_for_bit() {
    let d = tempfile::tempdir().unwrap();
    let mut c = RunConfig {
        method: Method::Fomoe,
        sites: 4,
        steps: 16,
        inner_steps: 4,
        threads_per_site: Some(1),
        checkpoint_every_rounds: Some(1),
        ..Default::default()
    };
    c.network.backend = Backend::Sim;
    c.eval_sequences = 4;
    c.fomoe.rho = 2;
    c.fomoe.placement = Placement::LoadAware;
    let reg = baselines::registry();
    let full = d.path().join("full");
    run_one(&c, &full, &reg, &RunOptions::default()).unwrap();

    // Interrupted in round 2 (after two re-placements), resumed from round 1's checkpoints.
    let cut = d.path().join("cut");
    let mut crash = c.clone();
    // FoMoE continues without a lost site by default; here the loss must stop the run.
    crash.on_site_loss = Some(harness::config::OnSiteLoss::Fail);
    crash.faults = vec![Fault {
        site: 2,
        at_step: Some(11),
        kind: FaultKind::Crash,
        ..Default::default()
    }];
    let err = run_one(&crash, &cut, &reg, &RunOptions::default()).unwrap_err();
    assert!(format!("{err:#}").contains("crashed at step 11"), "{err:#}");
    let mut resume = crash.clone();
    resume.faults.clear();
    resume.resume_from = Some(cut.clone());
    run_one(&resume, &cut, &reg, &RunOptions::default()).unwrap();

    let (a, b): (Vec<StepRow>, Vec<StepRow>) =
        (rows(&full.join("steps.csv")), rows(&cut.join("steps.csv")));
    // Steps after the checkpoint appear twice in the cut run; the later rows count.
    let last = |rows: &[StepRow], step: usize, site: usize| {
        let r = rows
            .iter()
            .rev()
            .find(|r| r.step == step && r.site == site)
            .unwrap();
        (r.loss.to_bits(), r.payload_sent)
    };
    for step in 1..=16 {
        for site in 0..4 {
            assert_eq!(
                last(&a, step, site),
                last(&b, step, site),
                "step {step} site {site}"
            );
        }
    }
    // The global model's eval and the cumulative byte totals continue across the resume.
    let (ra, rb): (Vec<RoundRow>, Vec<RoundRow>) = (
        rows(&full.join("rounds.csv")),
        rows(&cut.join("rounds.csv")),
    );
    let final_rows = |r: &[RoundRow]| -> Vec<(u64, u64, u64)> {
        r.iter()
            .filter(|x| x.round == 3)
            .map(|x| {
                (
                    x.eval_loss.to_bits(),
                    x.payload_bytes_total,
                    x.framing_bytes_total,
                )
            })
            .collect()
    };
    assert_eq!(final_rows(&ra), final_rows(&rb));
    // Every site's final checkpoint (model, AdamW moments, outer optimiser, placement) is
    // identical.
    for site in 0..4 {
        let name = format!("ckpt-site{site}.safetensors");
        let ca = harness::checkpoint::Checkpoint::open(&full.join(&name)).unwrap();
        let cb = harness::checkpoint::Checkpoint::open(&cut.join(&name)).unwrap();
        let names = ca.names().unwrap();
        assert_eq!(names.len(), cb.names().unwrap().len(), "site {site}");
        assert!(names.iter().any(|n| n.starts_with("outer.momentum.")));
        assert_eq!(ca.meta("placement"), cb.meta("placement"), "site {site}");
        for n in &names {
            assert_eq!(
                ca.all_values(n).unwrap(),
                cb.all_values(n).unwrap(),
                "site {site} tensor {n}"
            );
        }
    }
}
