//! Rendezvous of ranks as threads of this process on loopback: meeting in any order, and
//! every refusal in one line naming the rank, with nobody left waiting.

use super::*;
use std::thread;

/// A port that was free a moment ago (the rendezvous binds it itself).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Options of `rank` in a world of `world` ranks and `endpoints` endpoints, meeting at
/// 127.0.0.1:`port`. Listener addresses are made up: the rendezvous only passes them on.
fn opts(
    rank: usize,
    world: usize,
    endpoints: usize,
    port: u16,
    token: &Token,
) -> RendezvousOptions {
    RendezvousOptions {
        rank,
        world,
        endpoints,
        address: format!("127.0.0.1:{port}"),
        run_id: "rdzv-test".into(),
        config_hash: "0123456789abcdef".into(),
        token: token.clone(),
        timeout: Duration::from_secs(5),
        listeners: hosted_endpoints(rank, world, endpoints)
            .into_iter()
            .map(|e| (e, SocketAddr::from(([0, 0, 0, 0], 40_000 + e as u16))))
            .collect(),
    }
}

/// Starts every rank on its own thread, `delay` after the previous one, in the given
/// order; returns the results in the same order with each one's time from its start.
fn start(
    ranks: Vec<RendezvousOptions>,
    delay: Duration,
) -> Vec<(Result<Meeting, RendezvousError>, Duration)> {
    let handles: Vec<_> = ranks
        .into_iter()
        .map(|o| {
            let h = thread::spawn(move || {
                let t = Instant::now();
                let r = meet(&o);
                (r, t.elapsed())
            });
            thread::sleep(delay);
            h
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn err(r: &Result<Meeting, RendezvousError>) -> &RendezvousError {
    match r {
        Ok(_) => panic!("expected a failure, the rank met the others"),
        Err(e) => e,
    }
}

#[test]
fn ranks_started_in_reverse_order_still_meet() {
    let token = Token::generate();
    let port = free_port();
    // World 4 with a fifth endpoint hosted by rank 0 (Photon's aggregator).
    let ranks = (0..4).rev().map(|r| opts(r, 4, 5, port, &token)).collect();
    let out = start(ranks, Duration::from_millis(150));
    let mut seen = Vec::new();
    for (r, _) in out {
        let m = r.unwrap_or_else(|e| panic!("{e}"));
        // Loopback everywhere: every endpoint at 127.0.0.1 and its listener's port.
        let want: Vec<SocketAddr> = (0..5)
            .map(|e| SocketAddr::from(([127, 0, 0, 1], 40_000 + e as u16)))
            .collect();
        assert_eq!(m.endpoints, want, "rank {}", m.rank);
        assert_eq!(m.hosts.len(), 4);
        assert_eq!(m.ranks_on_my_host(), 4);
        let links = m.control.iter().filter(|c| c.is_some()).count();
        assert_eq!(links, if m.rank == 0 { 3 } else { 1 }, "rank {}", m.rank);
        seen.push(m.rank);
    }
    assert_eq!(seen, vec![3, 2, 1, 0]);
}

#[test]
fn a_join_that_does_not_fit_is_refused_naming_the_rank_and_aborts_the_others() {
    type Change = Box<dyn Fn(&mut RendezvousOptions)>;
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "wrong world",
            Box::new(|o| {
                o.world = 4;
                o.endpoints = 4;
            }),
            "rank 2 (127.0.0.1:",
        ),
        (
            "config mismatch",
            Box::new(|o| o.config_hash = "fedcba9876543210".into()),
            "has another config (hash fedcba9876543210, rank 0 has 0123456789abcdef)",
        ),
        (
            "run id mismatch",
            Box::new(|o| o.run_id = "other-run".into()),
            "has run id `other-run`, rank 0 has `rdzv-test`",
        ),
    ];
    for (what, change, needle) in cases {
        let token = Token::generate();
        let port = free_port();
        let mut odd = opts(2, 3, 3, port, &token);
        change(&mut odd);
        // Rank 2 comes last, so rank 1 has joined and is told.
        let out = start(
            vec![
                opts(0, 3, 3, port, &token),
                opts(1, 3, 3, port, &token),
                odd,
            ],
            Duration::from_millis(300),
        );
        let (e0, e1, e2) = (err(&out[0].0), err(&out[1].0), err(&out[2].0));
        assert_eq!(e0.kind, FailureKind::Refused, "{what}: {e0}");
        assert!(
            e0.to_string().starts_with("rank 0: rank 2 "),
            "{what}: {e0}"
        );
        assert!(e0.to_string().contains(needle), "{what}: {e0}");
        assert_eq!(e2.kind, FailureKind::Refused, "{what}: {e2}");
        assert!(
            e2.to_string()
                .starts_with("rank 2: refused by rank 0: rank 2 "),
            "{what}: {e2}"
        );
        assert_eq!(e1.kind, FailureKind::Aborted, "{what}: {e1}");
        assert!(e1.to_string().contains(&e0.message), "{what}: {e1}");
        for (r, t) in &out {
            assert!(
                *t < Duration::from_secs(3),
                "{what}: {:?} took {t:?}",
                r.as_ref().err()
            );
        }
        assert!(!e0.to_string().contains('\n'));
    }
}

#[test]
fn wrong_world_names_both_sizes() {
    let token = Token::generate();
    let port = free_port();
    let mut odd = opts(2, 4, 4, port, &token);
    odd.timeout = Duration::from_secs(5);
    let out = start(
        vec![
            opts(0, 3, 3, port, &token),
            opts(1, 3, 3, port, &token),
            odd,
        ],
        Duration::from_millis(300),
    );
    let e = err(&out[0].0).to_string();
    assert!(e.contains("has world size 4, rank 0 has 3"), "{e}");
}

#[test]
fn a_rank_that_joins_twice_is_refused() {
    let token = Token::generate();
    let port = free_port();
    // World 4: ranks 0, 1, 2 and a second rank 2; rank 3 never comes.
    let out = start(
        vec![
            opts(0, 4, 4, port, &token),
            opts(1, 4, 4, port, &token),
            opts(2, 4, 4, port, &token),
            opts(2, 4, 4, port, &token),
        ],
        Duration::from_millis(300),
    );
    let e0 = err(&out[0].0);
    assert_eq!(e0.kind, FailureKind::Refused);
    assert!(
        e0.message
            .starts_with("rank 2 joined twice (from 127.0.0.1:"),
        "{e0}"
    );
    assert_eq!(err(&out[3].0).kind, FailureKind::Refused);
    assert_eq!(err(&out[1].0).kind, FailureKind::Aborted);
    assert_eq!(err(&out[2].0).kind, FailureKind::Aborted);
}

#[test]
fn a_wrong_token_is_turned_away_and_the_missing_rank_named() {
    let token = Token::generate();
    let port = free_port();
    let mut ranks: Vec<RendezvousOptions> = (0..3).map(|r| opts(r, 3, 3, port, &token)).collect();
    ranks[2].token = Token::generate();
    for o in &mut ranks {
        o.timeout = Duration::from_millis(1500);
    }
    let out = start(ranks, Duration::from_millis(200));
    let e2 = err(&out[2].0);
    assert_eq!(e2.kind, FailureKind::TurnedAway, "{e2}");
    assert!(
        e2.to_string()
            .starts_with("rank 2: the rendezvous at 127.0.0.1:"),
        "{e2}"
    );
    assert!(
        out[2].1 < Duration::from_secs(1),
        "turned away at once, not after the timeout"
    );
    let e0 = err(&out[0].0);
    assert_eq!(e0.kind, FailureKind::Timeout, "{e0}");
    assert!(
        e0.message.starts_with("rank 2 did not join the rendezvous within 1.5s (joined: 0, 1); turned away 1 connection(s): 127.0.0.1:"),
        "{e0}"
    );
    assert!(e0.message.contains("wrong token"), "{e0}");
    let e1 = err(&out[1].0);
    assert_eq!(e1.kind, FailureKind::Aborted);
    assert!(e1.message.ends_with(&e0.message), "{e1}");
}

#[test]
fn strangers_do_not_hold_up_the_rendezvous() {
    let token = Token::generate();
    let port = free_port();
    let r0 = thread::spawn({
        let o = opts(0, 2, 2, port, &token);
        move || meet(&o)
    });
    thread::sleep(Duration::from_millis(200));
    // One sends something that is not a fomoe hello, one connects and says nothing.
    let mut talker = TcpStream::connect(("127.0.0.1", port)).unwrap();
    talker.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let _silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let t = Instant::now();
    let m1 = meet(&opts(1, 2, 2, port, &token)).unwrap_or_else(|e| panic!("{e}"));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let m0 = r0.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m0.endpoints, m1.endpoints);
}

#[test]
fn a_rank_that_never_comes_is_named_and_nobody_waits() {
    let token = Token::generate();
    let port = free_port();
    let mut ranks: Vec<RendezvousOptions> = (0..2).map(|r| opts(r, 3, 3, port, &token)).collect();
    for o in &mut ranks {
        o.timeout = Duration::from_secs(1);
    }
    let out = start(ranks, Duration::from_millis(100));
    let e0 = err(&out[0].0);
    assert_eq!(e0.kind, FailureKind::Timeout);
    assert_eq!(
        e0.to_string(),
        "rank 0: rank 2 did not join the rendezvous within 1s (joined: 0, 1)"
    );
    let e1 = err(&out[1].0);
    assert_eq!(
        e1.to_string(),
        "rank 1: rank 0 ended the rendezvous: rank 2 did not join the rendezvous within 1s (joined: 0, 1)"
    );
    for (_, t) in &out {
        assert!(*t < Duration::from_secs(3), "{t:?}");
    }
}

#[test]
fn without_rank_0_a_rank_gives_up_after_its_timeout() {
    let mut o = opts(1, 2, 2, free_port(), &Token::generate());
    o.timeout = Duration::from_millis(400);
    let t = Instant::now();
    let e = meet(&o).err().expect("nobody listens");
    assert_eq!(e.kind, FailureKind::Unreachable);
    assert!(
        e.to_string()
            .starts_with("rank 1: no rendezvous at 127.0.0.1:"),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[test]
fn bad_addresses_and_a_port_in_use_fail_in_one_line() {
    let token = Token::generate();
    let mut o = opts(1, 2, 2, 1, &token);
    o.address = "nohost.invalid:29500".into();
    let e = meet(&o).err().unwrap();
    assert_eq!(e.kind, FailureKind::Setup);
    assert!(
        e.to_string()
            .starts_with("rank 1: rendezvous address `nohost.invalid:29500` does not resolve"),
        "{e}"
    );
    o.address = "no-port-here".into();
    assert!(meet(&o)
        .err()
        .unwrap()
        .to_string()
        .contains("does not resolve"));
    o.address = "127.0.0.1:0".into();
    assert!(meet(&o).err().unwrap().to_string().contains("has port 0"));
    let taken = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let e = meet(&opts(0, 2, 2, port, &token)).err().unwrap();
    assert_eq!(e.kind, FailureKind::Setup);
    assert!(
        e.to_string().starts_with(&format!(
            "rank 0: cannot listen for the rendezvous on 0.0.0.0:{port}: "
        )),
        "{e}"
    );
}

#[test]
fn a_world_of_one_meets_nobody() {
    let m = meet(&opts(0, 1, 2, 1, &Token::generate())).unwrap();
    assert_eq!(m.endpoints.len(), 2);
    assert_eq!(m.endpoints[1], SocketAddr::from(([127, 0, 0, 1], 40_001)));
}

#[test]
fn control_messages_keep_floats_exact() {
    let (a, b) = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (
            Control::new(c, PeerName::site(0, "a")).unwrap(),
            Control::new(s, PeerName::site(1, "b")).unwrap(),
        )
    };
    let values = vec![0.1f64, 1.0 / 3.0, f64::NAN, f64::INFINITY, -0.0, 5e-324];
    a.send(&values).unwrap();
    let got: Vec<f64> = b.recv(Duration::from_secs(5)).unwrap();
    let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got), bits(&values));
    drop(a);
    let e = b.recv::<Vec<f64>>(Duration::from_secs(5)).unwrap_err();
    assert!(matches!(e, NetError::Closed { .. }), "{e}");
}
