//! How much memory this machine can give a run: `MemAvailable` from `/proc/meminfo`, or the
//! head-room of this process's memory cgroup (limit − usage) when that is smaller (a
//! container's limit is often far below the host's memory). cgroup v2 reads
//! `/sys/fs/cgroup/memory.max` and `memory.current`, v1 `memory/memory.limit_in_bytes` and
//! `memory/memory.usage_in_bytes`; an unlimited cgroup (`max`, or v1's near-2^63 value) does
//! not count. Where none of these can be read (not Linux), nothing is known and runs are not
//! checked.

use serde::Serialize;

/// Memory a run may use here, and where the figure comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MachineMemory {
    pub available_bytes: u64,
    /// `MemAvailable`, `cgroup memory.max`, …
    pub source: String,
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
pub fn parse_meminfo_available(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut parts = line.split_whitespace().skip(1);
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// Head-room of a cgroup from its limit and usage texts; `None` when unlimited.
pub fn cgroup_headroom(limit: &str, usage: &str) -> Option<u64> {
    let limit = limit.trim();
    if limit == "max" {
        return None;
    }
    let limit: u64 = limit.parse().ok()?;
    // cgroup v1 writes "no limit" as the largest page-aligned i64.
    if limit >= 1 << 62 {
        return None;
    }
    let usage: u64 = usage.trim().parse().ok()?;
    Some(limit.saturating_sub(usage))
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// What this machine can give a run now (see the module doc); `None` when unknown.
pub fn detect() -> Option<MachineMemory> {
    let mut best: Option<MachineMemory> = read("/proc/meminfo")
        .and_then(|t| parse_meminfo_available(&t))
        .map(|b| MachineMemory {
            available_bytes: b,
            source: "MemAvailable".into(),
        });
    let cgroups = [
        (
            "/sys/fs/cgroup/memory.max",
            "/sys/fs/cgroup/memory.current",
            "cgroup memory.max",
        ),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
            "cgroup memory.limit_in_bytes",
        ),
    ];
    for (limit, usage, name) in cgroups {
        if let (Some(l), Some(u)) = (read(limit), read(usage)) {
            if let Some(h) = cgroup_headroom(&l, &u) {
                if best.as_ref().is_none_or(|b| h < b.available_bytes) {
                    best = Some(MachineMemory {
                        available_bytes: h,
                        source: name.into(),
                    });
                }
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_cgroup_texts() {
        let t = "MemTotal:       24684092 kB\nMemFree:  5611652 kB\nMemAvailable:   22774552 kB\n";
        assert_eq!(parse_meminfo_available(t), Some(22_774_552 * 1024));
        assert_eq!(parse_meminfo_available("MemTotal: 1 kB\n"), None);
        assert_eq!(cgroup_headroom("max\n", "100"), None);
        assert_eq!(cgroup_headroom("9223372036854771712\n", "100"), None);
        assert_eq!(cgroup_headroom("1000\n", "300\n"), Some(700));
        assert_eq!(cgroup_headroom("1000", "3000"), Some(0));
        // This machine: something is known on Linux.
        if cfg!(target_os = "linux") {
            let m = detect().expect("Linux has /proc/meminfo");
            assert!(m.available_bytes > 0);
        }
    }
}
