//! Where a `fomoe site` process learns who it is: its rank, the world size and the
//! rendezvous address from flags, else from the Slurm environment; and the run token from a
//! private place (an environment variable or a file only its owner can read, never a
//! command-line argument, which `ps` shows to everyone).
//!
//! ## Slurm
//! `srun` starts one task per site and sets `SLURM_PROCID` (the rank), `SLURM_NTASKS` (the
//! world; `SLURM_NPROCS` on old versions) and `SLURM_STEP_NODELIST` (the step's nodes as a
//! hostlist expression, `gpu[01-04]`; `SLURM_JOB_NODELIST` outside a step). Task 0 runs on
//! the first node of the list under Slurm's default (block) and cyclic distributions, so
//! that node is the rendezvous host unless `--rendezvous` says otherwise (pass it for an
//! arbitrary distribution). The port is `--rendezvous-port`, else
//! [`SLURM_PORT_BASE`]` + SLURM_JOB_ID mod 1000`, so two jobs sharing a node rarely collide
//! (and a collision is a one-line "cannot listen" error at rank 0, not a wrong run).
//!
//! Flags win over the environment: `--rank` and `--world` go together, and outside Slurm
//! `--rendezvous HOST:PORT` is required.

use std::path::Path;

use crate::net::frame::Token;

/// First port of the range the Slurm default rendezvous port is taken from.
pub const SLURM_PORT_BASE: u16 = 24000;
/// Environment variable holding the run token (64 hex digits).
pub const TOKEN_ENV: &str = "FOMOE_TOKEN";

/// What the command line says (each `None` when the flag is absent).
#[derive(Clone, Debug, Default)]
pub struct LaunchFlags {
    pub rank: Option<usize>,
    pub world: Option<usize>,
    pub rendezvous: Option<String>,
    pub rendezvous_port: Option<u16>,
}

/// Who this process is in the federation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world: usize,
    /// `HOST:PORT` of rank 0's rendezvous.
    pub rendezvous: String,
    /// Where the world size came from (`--world` or `SLURM_NTASKS`), for error messages.
    pub world_from: &'static str,
    /// `SLURM_CPUS_PER_TASK`, when Slurm gave each task its own cores.
    pub cpus_per_task: Option<usize>,
}

/// A launch error: one line saying what is missing or wrong and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LaunchError(pub String);

fn parse_num<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, LaunchError> {
    v.trim()
        .parse()
        .map_err(|_| LaunchError(format!("{name} = `{v}` is not a non-negative number")))
}

/// Rank, world and rendezvous from `flags`, else from the Slurm variables `env` returns.
pub fn resolve(
    flags: &LaunchFlags,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Launch, LaunchError> {
    let (rank, world, world_from) = match (flags.rank, flags.world) {
        (Some(r), Some(w)) => (r, w, "--world"),
        (Some(_), None) | (None, Some(_)) => {
            return Err(LaunchError(
                "--rank and --world go together: give both, or neither under srun".into(),
            ))
        }
        (None, None) => {
            let rank = env("SLURM_PROCID");
            let (world_name, world) = match env("SLURM_NTASKS") {
                Some(w) => ("SLURM_NTASKS", Some(w)),
                None => ("SLURM_NPROCS", env("SLURM_NPROCS")),
            };
            match (rank, world) {
                (Some(r), Some(w)) => (
                    parse_num("SLURM_PROCID", &r)?,
                    parse_num(world_name, &w)?,
                    "SLURM_NTASKS",
                ),
                _ => {
                    return Err(LaunchError(
                        "no rank: pass --rank R --world W --rendezvous HOST:PORT, or start \
                         under srun (SLURM_PROCID and SLURM_NTASKS are not set)"
                            .into(),
                    ))
                }
            }
        }
    };
    if world == 0 || rank >= world {
        return Err(LaunchError(format!(
            "rank {rank} is not below the world size {world} ({world_from})"
        )));
    }
    let rendezvous = match &flags.rendezvous {
        Some(r) => r.clone(),
        None => slurm_rendezvous(flags.rendezvous_port, env)?,
    };
    let cpus_per_task = match env("SLURM_CPUS_PER_TASK") {
        Some(v) => Some(parse_num("SLURM_CPUS_PER_TASK", &v)?).filter(|&n: &usize| n > 0),
        None => None,
    };
    Ok(Launch {
        rank,
        world,
        rendezvous,
        world_from,
        cpus_per_task,
    })
}

/// `first node of the step:port` from the Slurm environment.
fn slurm_rendezvous(
    port: Option<u16>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, LaunchError> {
    let (name, list) = match env("SLURM_STEP_NODELIST") {
        Some(l) => ("SLURM_STEP_NODELIST", l),
        None => match env("SLURM_JOB_NODELIST") {
            Some(l) => ("SLURM_JOB_NODELIST", l),
            None => {
                return Err(LaunchError(
                    "no rendezvous address: pass --rendezvous HOST:PORT (rank 0's host), or \
                     start under srun (SLURM_STEP_NODELIST is not set)"
                        .into(),
                ))
            }
        },
    };
    let host = first_host(&list)
        .ok_or_else(|| LaunchError(format!("{name} = `{list}` is not a hostlist expression")))?;
    let port = match port {
        Some(p) => p,
        None => {
            let job = env("SLURM_JOB_ID").ok_or_else(|| {
                LaunchError(
                    "no rendezvous port: pass --rendezvous-port P (SLURM_JOB_ID is not set)".into(),
                )
            })?;
            let job: u64 = parse_num("SLURM_JOB_ID", &job)?;
            SLURM_PORT_BASE + (job % 1000) as u16
        }
    };
    Ok(format_host_port(&host, port))
}

/// `host:port`, bracketing an IPv6 literal.
fn format_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The first host of a Slurm hostlist expression (`a[01-03,7],b` → `a01`).
pub fn first_host(list: &str) -> Option<String> {
    hostlist_parser::parse(list.trim())
        .ok()?
        .into_iter()
        .next()
        .filter(|h| !h.is_empty())
}

/// The run token: from `token_file` when given (a regular file no one but its owner may
/// read or write, holding 64 hex digits), else from [`TOKEN_ENV`].
pub fn read_token(
    token_file: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Token, LaunchError> {
    let (what, text) = match token_file {
        Some(p) => (format!("--token-file {}", p.display()), read_private(p)?),
        None => match env(TOKEN_ENV) {
            Some(t) => (TOKEN_ENV.to_string(), t),
            None => {
                return Err(LaunchError(format!(
                    "no run token: set {TOKEN_ENV} to the same 64 hex digits on every rank \
                     (export {TOKEN_ENV}=$(openssl rand -hex 32)) or pass --token-file PATH \
                     (mode 0600)"
                )))
            }
        },
    };
    Token::from_hex(text.trim())
        .map_err(|_| LaunchError(format!("{what}: the token must be 64 hex digits")))
}

fn read_private(p: &Path) -> Result<String, LaunchError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = p.display();
    let meta =
        std::fs::metadata(p).map_err(|e| LaunchError(format!("--token-file {shown}: {e}")))?;
    if !meta.is_file() {
        return Err(LaunchError(format!(
            "--token-file {shown}: not a regular file"
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(LaunchError(format!(
            "--token-file {shown}: readable or writable by others (mode {mode:04o}); chmod 600 {shown}"
        )));
    }
    std::fs::read_to_string(p).map_err(|e| LaunchError(format!("--token-file {shown}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| m.get(k).cloned()
    }

    #[test]
    fn slurm_environment_gives_rank_world_and_rank_0s_host() {
        let env = env_of(&[
            ("SLURM_PROCID", "2"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_STEP_NODELIST", "gpu[07-08,11],login1"),
            ("SLURM_JOB_NODELIST", "gpu[01-16]"),
            ("SLURM_JOB_ID", "123456"),
            ("SLURM_CPUS_PER_TASK", "8"),
        ]);
        let l = resolve(&LaunchFlags::default(), &env).unwrap();
        assert_eq!(
            l,
            Launch {
                rank: 2,
                world: 4,
                rendezvous: "gpu07:24456".into(),
                world_from: "SLURM_NTASKS",
                cpus_per_task: Some(8),
            }
        );
        let flags = LaunchFlags {
            rendezvous_port: Some(29400),
            ..Default::default()
        };
        assert_eq!(resolve(&flags, &env).unwrap().rendezvous, "gpu07:29400");
        // Outside a step, the job's node list.
        let env = env_of(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NPROCS", "2"),
            ("SLURM_JOB_NODELIST", "node[009-010]"),
            ("SLURM_JOB_ID", "7"),
        ]);
        assert_eq!(
            resolve(&LaunchFlags::default(), &env).unwrap().rendezvous,
            "node009:24007"
        );
    }

    #[test]
    fn flags_win_and_go_together() {
        let env = env_of(&[("SLURM_PROCID", "2"), ("SLURM_NTASKS", "4")]);
        let flags = LaunchFlags {
            rank: Some(1),
            world: Some(3),
            rendezvous: Some("10.0.0.1:29500".into()),
            rendezvous_port: None,
        };
        let l = resolve(&flags, &env).unwrap();
        assert_eq!((l.rank, l.world, l.world_from), (1, 3, "--world"));
        assert_eq!(l.rendezvous, "10.0.0.1:29500");
        let half = LaunchFlags {
            rank: Some(1),
            ..Default::default()
        };
        assert!(resolve(&half, &env)
            .unwrap_err()
            .0
            .starts_with("--rank and --world go together"));
    }

    #[test]
    fn missing_or_bad_values_fail_in_one_line() {
        let none = env_of(&[]);
        assert!(resolve(&LaunchFlags::default(), &none)
            .unwrap_err()
            .0
            .starts_with("no rank: pass --rank R --world W --rendezvous HOST:PORT"));
        let flags = LaunchFlags {
            rank: Some(0),
            world: Some(2),
            ..Default::default()
        };
        assert!(resolve(&flags, &none)
            .unwrap_err()
            .0
            .starts_with("no rendezvous address: pass --rendezvous HOST:PORT"));
        let bad = env_of(&[("SLURM_PROCID", "x"), ("SLURM_NTASKS", "4")]);
        assert_eq!(
            resolve(&LaunchFlags::default(), &bad).unwrap_err().0,
            "SLURM_PROCID = `x` is not a non-negative number"
        );
        let out = env_of(&[("SLURM_PROCID", "4"), ("SLURM_NTASKS", "4")]);
        assert_eq!(
            resolve(&LaunchFlags::default(), &out).unwrap_err().0,
            "rank 4 is not below the world size 4 (SLURM_NTASKS)"
        );
        let list = env_of(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
            ("SLURM_STEP_NODELIST", "gpu[3-"),
            ("SLURM_JOB_ID", "1"),
        ]);
        assert_eq!(
            resolve(&LaunchFlags::default(), &list).unwrap_err().0,
            "SLURM_STEP_NODELIST = `gpu[3-` is not a hostlist expression"
        );
    }

    #[test]
    fn hostlists_and_ipv6() {
        assert_eq!(first_host("vm").as_deref(), Some("vm"));
        assert_eq!(
            first_host("rack[2-3]-n[08-09]").as_deref(),
            Some("rack2-n08")
        );
        assert_eq!(format_host_port("::1", 5), "[::1]:5");
    }

    #[test]
    fn the_token_comes_from_the_environment_or_a_private_file() {
        let t = Token::generate();
        let env = env_of(&[(TOKEN_ENV, &t.to_hex())]);
        assert_eq!(read_token(None, &env).unwrap(), t);
        let e = read_token(None, &env_of(&[])).unwrap_err().0;
        assert!(e.starts_with("no run token: set FOMOE_TOKEN"), "{e}");
        assert_eq!(
            read_token(None, &env_of(&[(TOKEN_ENV, "abc")]))
                .unwrap_err()
                .0,
            "FOMOE_TOKEN: the token must be 64 hex digits"
        );
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("token");
        std::fs::write(&p, format!("{}\n", t.to_hex())).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_token(Some(&p), &env_of(&[])).unwrap_err().0;
        assert!(
            e.contains("readable or writable by others (mode 0644); chmod 600"),
            "{e}"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token(Some(&p), &env_of(&[])).unwrap(), t);
    }
}
