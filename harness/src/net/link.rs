//! The link model: every ordered pair of sites (i → j) has a rate, a one-way delay and a
//! jitter. Both emulating backends apply it the same way:
//!
//! - a link is busy while it transmits: a message of `w` wire bytes that is handed to the link
//!   at time `t` leaves at `finish = max(t, previous finish) + w·8 / rate_bps`;
//! - it arrives at `finish + delay + u`, `u` uniform in `[−jitter, +jitter]`, and never before
//!   the previous arrival on the same link (order is kept, as on one TCP connection), so with
//!   jitter the mean delay is slightly above `delay`.
//!
//! Topologies give the link of every ordered pair:
//! - `uniform`: one link for every pair;
//! - `per-pair`: listed pairs (both directions unless `directed`), the rest from `default`;
//! - `per-site`: each site has an uplink rate, a downlink rate, a delay and a jitter to the
//!   core; pair (i, j) gets rate `min(up_i, down_j)`, delay `delay_i + delay_j` and jitter
//!   `jitter_i + jitter_j`;
//! - `matrix`: `links[i][j]` is the link i → j (a full M×M table, `"-"` on the diagonal),
//!   so up and down may differ;
//! - `regions`: named regions, each a list of sites; `within` links two sites of one
//!   region, `between` lists the links between regions (both directions unless
//!   `directed`), e.g. two sites in one region and two across an ocean; `aggregator`
//!   names the region of Photon's aggregator, so one topology serves every method.
//!
//! Photon's aggregator (star mode) is endpoint M: a topology that lists endpoints (per-site,
//! matrix, regions) includes it.
//!
//! Impossible values are refused when the config is read: rate must be in
//! [1 kbit/s, 1 tbit/s], delay at most 10 s, jitter at most the delay (so no sampled delay is
//! negative).
//!
//! In TOML a link is either a scenario name or a table, optionally starting from a scenario:
//! `link = "consumer"`, `link = { rate = "1gbit", delay = "20ms" }`,
//! `link = { scenario = "internet", delay = "80ms" }`.

use crate::units::{format_duration, format_rate, parse_duration, parse_rate_bps};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Smallest accepted rate (1 kbit/s).
pub const MIN_RATE_BPS: u64 = 1_000;
/// Largest accepted rate (1 tbit/s).
pub const MAX_RATE_BPS: u64 = 1_000_000_000_000;
/// Largest accepted one-way delay.
pub const MAX_DELAY: Duration = Duration::from_secs(10);

/// A link value or topology that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("invalid {field} `{value}`: {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },
    #[error("unknown link scenario `{0}`; allowed: {allowed}", allowed = SCENARIO_NAMES.join(", "))]
    UnknownScenario(String),
    #[error("topology: {0}")]
    Topology(String),
}

/// One directed link: rate in bit/s, one-way delay and jitter (uniform ±jitter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSpec {
    pub rate_bps: u64,
    pub delay: Duration,
    pub jitter: Duration,
}

/// Names of the built-in scenarios, in the order `scenario()` knows them.
pub const SCENARIO_NAMES: &[&str] = &[
    "same-region",
    "cross-region",
    "cross-continent",
    "consumer",
    "internet",
    "lan",
];

impl LinkSpec {
    /// A checked link.
    pub fn new(rate_bps: u64, delay: Duration, jitter: Duration) -> Result<Self, LinkError> {
        let link = LinkSpec {
            rate_bps,
            delay,
            jitter,
        };
        link.validate()?;
        Ok(link)
    }

    /// A named scenario: `same-region` 10 gbit 1 ms, `cross-region` 1 gbit 20 ms,
    /// `cross-continent` 1 gbit 40 ms, `consumer` 100 mbit 20 ms, `internet` 50 mbit 50 ms
    /// ± 5 ms, `lan` 10 gbit 100 µs.
    pub fn scenario(name: &str) -> Result<Self, LinkError> {
        let ms = Duration::from_millis;
        let (rate_bps, delay, jitter) = match name {
            "same-region" => (10_000_000_000, ms(1), Duration::ZERO),
            "cross-region" => (1_000_000_000, ms(20), Duration::ZERO),
            "cross-continent" => (1_000_000_000, ms(40), Duration::ZERO),
            "consumer" => (100_000_000, ms(20), Duration::ZERO),
            "internet" => (50_000_000, ms(50), ms(5)),
            "lan" => (10_000_000_000, Duration::from_micros(100), Duration::ZERO),
            other => return Err(LinkError::UnknownScenario(other.to_string())),
        };
        Ok(LinkSpec {
            rate_bps,
            delay,
            jitter,
        })
    }

    /// Refuses rate outside [1 kbit/s, 1 tbit/s], delay over 10 s, jitter over delay.
    pub fn validate(&self) -> Result<(), LinkError> {
        let bad = |field: &str, value: String, reason: &str| LinkError::Invalid {
            field: field.into(),
            value,
            reason: reason.into(),
        };
        if self.rate_bps < MIN_RATE_BPS || self.rate_bps > MAX_RATE_BPS {
            return Err(bad(
                "rate",
                format!("{}bit", self.rate_bps),
                "must be between 1kbit and 1tbit",
            ));
        }
        if self.delay > MAX_DELAY {
            return Err(bad(
                "delay",
                format_duration(self.delay),
                "must be at most 10s",
            ));
        }
        if self.jitter > self.delay {
            return Err(bad(
                "jitter",
                format_duration(self.jitter),
                &format!(
                    "must not exceed the delay ({})",
                    format_duration(self.delay)
                ),
            ));
        }
        Ok(())
    }

    /// Time the link is busy transmitting `wire_bytes`: ⌈wire_bytes·8·10⁹ / rate_bps⌉ ns.
    pub fn serialisation_time(&self, wire_bytes: u64) -> Duration {
        let bits = wire_bytes as u128 * 8 * 1_000_000_000;
        let rate = self.rate_bps.max(1) as u128;
        let ns = bits.div_ceil(rate);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    /// Bytes the link carries in one second.
    pub fn bytes_per_second(&self) -> f64 {
        self.rate_bps as f64 / 8.0
    }
}

impl fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            format_rate(self.rate_bps),
            format_duration(self.delay)
        )?;
        if !self.jitter.is_zero() {
            write!(f, " ±{}", format_duration(self.jitter))?;
        }
        Ok(())
    }
}

impl Serialize for LinkSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("rate", &format_rate(self.rate_bps))?;
        m.serialize_entry("delay", &format_duration(self.delay))?;
        m.serialize_entry("jitter", &format_duration(self.jitter))?;
        m.end()
    }
}

impl<'de> Deserialize<'de> for LinkSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LinkVisitor)
    }
}

struct LinkVisitor;

impl<'de> serde::de::Visitor<'de> for LinkVisitor {
    type Value = LinkSpec;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a link scenario name ({}) or a table {{ rate, delay, jitter, scenario }}",
            SCENARIO_NAMES.join(", ")
        )
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<LinkSpec, E> {
        LinkSpec::scenario(v).map_err(E::custom)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<LinkSpec, A::Error> {
        use serde::de::Error;
        let (mut scenario, mut rate, mut delay, mut jitter) = (None, None, None, None);
        while let Some(key) = map.next_key::<String>()? {
            let value: String = map.next_value()?;
            match key.as_str() {
                "scenario" => {
                    scenario = Some(LinkSpec::scenario(&value).map_err(A::Error::custom)?)
                }
                "rate" => rate = Some(parse_rate_bps(&value).map_err(A::Error::custom)?),
                "delay" => delay = Some(parse_duration(&value).map_err(A::Error::custom)?),
                "jitter" => jitter = Some(parse_duration(&value).map_err(A::Error::custom)?),
                other => {
                    return Err(A::Error::unknown_field(
                        other,
                        &["scenario", "rate", "delay", "jitter"],
                    ))
                }
            }
        }
        let base = scenario;
        let link = LinkSpec {
            rate_bps: rate
                .or(base.map(|b| b.rate_bps))
                .ok_or_else(|| A::Error::missing_field("rate"))?,
            delay: delay
                .or(base.map(|b| b.delay))
                .ok_or_else(|| A::Error::missing_field("delay"))?,
            jitter: jitter.or(base.map(|b| b.jitter)).unwrap_or(Duration::ZERO),
        };
        link.validate().map_err(A::Error::custom)?;
        Ok(link)
    }
}

/// One listed pair of a `per-pair` topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairLink {
    pub from: usize,
    pub to: usize,
    pub link: LinkSpec,
    /// Only `from → to`; by default the link applies in both directions.
    #[serde(default)]
    pub directed: bool,
}

/// One site's access link in a `per-site` topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteAccess {
    #[serde(with = "crate::units::serde_rate")]
    pub up: u64,
    #[serde(with = "crate::units::serde_rate")]
    pub down: u64,
    #[serde(with = "crate::units::serde_duration")]
    pub delay: Duration,
    #[serde(with = "crate::units::serde_duration", default)]
    pub jitter: Duration,
}

/// How links between sites are given (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Topology {
    Uniform {
        link: LinkSpec,
    },
    PerPair {
        #[serde(default)]
        default: Option<LinkSpec>,
        #[serde(default)]
        pairs: Vec<PairLink>,
    },
    PerSite {
        sites: Vec<SiteAccess>,
    },
    Matrix {
        links: Vec<Vec<MatrixCell>>,
    },
    Regions {
        /// Region name → its endpoints.
        regions: BTreeMap<String, Vec<usize>>,
        /// The link between two endpoints of one region.
        #[serde(default)]
        within: Option<LinkSpec>,
        #[serde(default)]
        between: Vec<RegionLink>,
        /// The region of Photon's aggregator (the last endpoint, star mode) when no region
        /// lists it; other methods have no aggregator and ignore it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        aggregator: Option<String>,
    },
}

/// One cell of a `matrix` topology: a link, or `"-"` (no link: the diagonal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatrixCell(pub Option<LinkSpec>);

impl Serialize for MatrixCell {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Some(l) => l.serialize(s),
            None => s.serialize_str("-"),
        }
    }
}

impl<'de> Deserialize<'de> for MatrixCell {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Cell;
        impl<'de> serde::de::Visitor<'de> for Cell {
            type Value = MatrixCell;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "\"-\" or a link (scenario name or table)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MatrixCell, E> {
                if v == "-" {
                    return Ok(MatrixCell(None));
                }
                LinkVisitor.visit_str(v).map(|l| MatrixCell(Some(l)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<MatrixCell, A::Error> {
                LinkVisitor.visit_map(map).map(|l| MatrixCell(Some(l)))
            }
        }
        d.deserialize_any(Cell)
    }
}

/// A link between two regions of a `regions` topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionLink {
    /// `[from, to]`.
    pub regions: [String; 2],
    pub link: LinkSpec,
    /// Only `from → to`; by default the link applies in both directions.
    #[serde(default)]
    pub directed: bool,
}

impl Topology {
    /// Every pair gets `link`.
    pub fn uniform(link: LinkSpec) -> Self {
        Topology::Uniform { link }
    }

    /// The link of every ordered pair for `world` sites, checked.
    pub fn resolve(&self, world: usize) -> Result<LinkMatrix, LinkError> {
        let mut links = vec![None; world * world];
        let topo = |msg: String| LinkError::Topology(msg);
        match self {
            Topology::Uniform { link } => {
                link.validate()?;
                for i in 0..world {
                    for j in 0..world {
                        if i != j {
                            links[i * world + j] = Some(*link);
                        }
                    }
                }
            }
            Topology::PerPair { default, pairs } => {
                if let Some(d) = default {
                    d.validate()?;
                }
                for p in pairs {
                    if p.from >= world || p.to >= world || p.from == p.to {
                        return Err(topo(format!(
                            "pair {} → {} is not a pair of distinct sites in 0..{world}",
                            p.from, p.to
                        )));
                    }
                    p.link.validate()?;
                    let mut set = |a: usize, b: usize| -> Result<(), LinkError> {
                        let slot = &mut links[a * world + b];
                        if slot.is_some() {
                            return Err(topo(format!("pair {a} → {b} is given twice")));
                        }
                        *slot = Some(p.link);
                        Ok(())
                    };
                    set(p.from, p.to)?;
                    if !p.directed {
                        set(p.to, p.from)?;
                    }
                }
                for i in 0..world {
                    for j in 0..world {
                        if i != j && links[i * world + j].is_none() {
                            match default {
                                Some(d) => links[i * world + j] = Some(*d),
                                None => {
                                    return Err(topo(format!(
                                        "no link for pair {i} → {j} and no `default`"
                                    )))
                                }
                            }
                        }
                    }
                }
            }
            Topology::PerSite { sites } => {
                if sites.len() != world {
                    return Err(topo(format!(
                        "per-site topology lists {} sites, the run has {world}",
                        sites.len()
                    )));
                }
                for (i, s) in sites.iter().enumerate() {
                    for (name, rate) in [("up", s.up), ("down", s.down)] {
                        LinkSpec {
                            rate_bps: rate,
                            delay: Duration::ZERO,
                            jitter: Duration::ZERO,
                        }
                        .validate()
                        .map_err(|e| topo(format!("site {i} {name}: {e}")))?;
                    }
                }
                for (i, a) in sites.iter().enumerate() {
                    for (j, b) in sites.iter().enumerate() {
                        if i != j {
                            let link = LinkSpec {
                                rate_bps: a.up.min(b.down),
                                delay: a.delay + b.delay,
                                jitter: a.jitter + b.jitter,
                            };
                            link.validate()
                                .map_err(|e| topo(format!("pair {i} → {j}: {e}")))?;
                            links[i * world + j] = Some(link);
                        }
                    }
                }
            }
            Topology::Matrix { links: rows } => {
                let ok = rows.len() == world && rows.iter().all(|r| r.len() == world);
                if !ok {
                    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
                    return Err(topo(format!(
                        "link matrix is {}×{cols}, the run has {world} endpoints (sites, plus Photon's aggregator in star mode)",
                        rows.len()
                    )));
                }
                for (i, row) in rows.iter().enumerate() {
                    for (j, cell) in row.iter().enumerate() {
                        match (i == j, cell.0) {
                            (true, None) => {}
                            (true, Some(_)) => {
                                return Err(topo(format!(
                                    "matrix[{i}][{i}] must be \"-\" (no link to itself)"
                                )))
                            }
                            (false, None) => {
                                return Err(topo(format!(
                                    "matrix[{i}][{j}] is \"-\": pair {i} → {j} needs a link"
                                )))
                            }
                            (false, Some(l)) => {
                                l.validate()
                                    .map_err(|e| topo(format!("matrix[{i}][{j}]: {e}")))?;
                                links[i * world + j] = Some(l);
                            }
                        }
                    }
                }
            }
            Topology::Regions {
                regions,
                within,
                between,
                aggregator,
            } => {
                let region_of = resolve_regions(regions, world, aggregator.as_deref())?;
                let names = || regions.keys().cloned().collect::<Vec<_>>().join(", ");
                let mut pair_links: BTreeMap<(&str, &str), LinkSpec> = BTreeMap::new();
                for b in between {
                    for r in &b.regions {
                        if !regions.contains_key(r) {
                            return Err(topo(format!(
                                "between: region `{r}` is not defined (regions: {})",
                                names()
                            )));
                        }
                    }
                    let (a, c) = (b.regions[0].as_str(), b.regions[1].as_str());
                    if a == c {
                        return Err(topo(format!("between: `{a}` to itself: use `within`")));
                    }
                    b.link.validate()?;
                    let mut set = |x: &'_ str, y: &'_ str| -> Result<(), LinkError> {
                        let key = (
                            regions.get_key_value(x).expect("checked").0.as_str(),
                            regions.get_key_value(y).expect("checked").0.as_str(),
                        );
                        if pair_links.insert(key, b.link).is_some() {
                            return Err(topo(format!(
                                "between: regions {x} → {y} are given twice"
                            )));
                        }
                        Ok(())
                    };
                    set(a, c)?;
                    if !b.directed {
                        set(c, a)?;
                    }
                }
                if let Some(w) = within {
                    w.validate()?;
                }
                for i in 0..world {
                    for j in 0..world {
                        if i == j {
                            continue;
                        }
                        let (ri, rj) = (region_of[i], region_of[j]);
                        let link = if ri == rj {
                            within.ok_or_else(|| topo(format!("region `{ri}` has two endpoints ({i}, {j}) and no `within` link")))?
                        } else {
                            *pair_links.get(&(ri, rj)).ok_or_else(|| {
                                topo(format!(
                                    "no link between regions {ri} → {rj} (pair {i} → {j})"
                                ))
                            })?
                        };
                        links[i * world + j] = Some(link);
                    }
                }
            }
        }
        Ok(LinkMatrix { world, links })
    }
}

/// The region of every endpoint, checked: each endpoint in exactly one region, no region
/// without an endpoint.
fn resolve_regions<'a>(
    regions: &'a BTreeMap<String, Vec<usize>>,
    world: usize,
    aggregator: Option<&str>,
) -> Result<Vec<&'a str>, LinkError> {
    let topo = |msg: String| LinkError::Topology(msg);
    let mut region_of: Vec<Option<&str>> = vec![None; world];
    if let Some(a) = aggregator {
        let Some((name, _)) = regions.get_key_value(a) else {
            return Err(topo(format!("aggregator: region `{a}` is not defined")));
        };
        if let Some(last) = world.checked_sub(1) {
            if !regions.values().any(|m| m.contains(&last)) {
                region_of[last] = Some(name.as_str());
            }
        }
    }
    for (name, members) in regions {
        if members.is_empty() {
            return Err(topo(format!("region `{name}` has no site")));
        }
        for &m in members {
            if m >= world {
                return Err(topo(format!(
                    "region `{name}`: endpoint {m} is not below {world}"
                )));
            }
            if let Some(other) = region_of[m] {
                return Err(topo(format!(
                    "endpoint {m} is in regions `{other}` and `{name}`"
                )));
            }
            region_of[m] = Some(name.as_str());
        }
    }
    region_of
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.ok_or_else(|| {
                topo(format!(
                    "endpoint {i} is in no region (Photon's aggregator in star mode is the last endpoint: `aggregator = \"<region>\"`)"
                ))
            })
        })
        .collect()
}

/// The resolved link of every ordered pair of a run's sites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkMatrix {
    world: usize,
    links: Vec<Option<LinkSpec>>,
}

impl LinkMatrix {
    /// Number of sites.
    pub fn world(&self) -> usize {
        self.world
    }

    /// Every ordered pair's link as JSON: `[{from, to, rate, delay, jitter}, …]`.
    pub fn record(&self) -> serde_json::Value {
        let mut out = Vec::new();
        for i in 0..self.world {
            for j in 0..self.world {
                if let Some(l) = self.get(i, j) {
                    out.push(serde_json::json!({
                        "from": i,
                        "to": j,
                        "rate": format_rate(l.rate_bps),
                        "delay": format_duration(l.delay),
                        "jitter": format_duration(l.jitter),
                    }));
                }
            }
        }
        serde_json::Value::Array(out)
    }

    /// The link `from → to`; `None` for `from == to` or out of range.
    pub fn get(&self, from: usize, to: usize) -> Option<LinkSpec> {
        if from >= self.world || to >= self.world {
            return None;
        }
        self.links[from * self.world + to]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn scenarios_have_their_documented_values() {
        let s = |n| LinkSpec::scenario(n).unwrap();
        assert_eq!(
            s("same-region"),
            LinkSpec {
                rate_bps: 10_000_000_000,
                delay: ms(1),
                jitter: ms(0)
            }
        );
        assert_eq!(
            s("cross-region"),
            LinkSpec {
                rate_bps: 1_000_000_000,
                delay: ms(20),
                jitter: ms(0)
            }
        );
        assert_eq!(
            s("cross-continent"),
            LinkSpec {
                rate_bps: 1_000_000_000,
                delay: ms(40),
                jitter: ms(0)
            }
        );
        assert_eq!(
            s("consumer"),
            LinkSpec {
                rate_bps: 100_000_000,
                delay: ms(20),
                jitter: ms(0)
            }
        );
        assert_eq!(
            s("internet"),
            LinkSpec {
                rate_bps: 50_000_000,
                delay: ms(50),
                jitter: ms(5)
            }
        );
        for name in SCENARIO_NAMES {
            s(name).validate().unwrap();
        }
        let e = LinkSpec::scenario("moon").unwrap_err().to_string();
        assert!(e.contains("`moon`") && e.contains("consumer"), "{e}");
    }

    #[test]
    fn impossible_links_are_rejected() {
        assert!(LinkSpec::new(0, ms(1), ms(0))
            .unwrap_err()
            .to_string()
            .contains("rate"));
        assert!(LinkSpec::new(100_000_000, ms(1), ms(2))
            .unwrap_err()
            .to_string()
            .contains("jitter"));
        assert!(LinkSpec::new(100_000_000, Duration::from_secs(11), ms(0)).is_err());
        // Through TOML, as a user writes them.
        #[derive(Deserialize, Debug)]
        struct Wrap {
            #[allow(dead_code)]
            link: LinkSpec,
        }
        for (text, needle) in [
            (r#"link = { rate = "0mbit", delay = "1ms" }"#, "`0mbit`"),
            (r#"link = { rate = "10mbit", delay = "-5ms" }"#, "`-5ms`"),
            (r#"link = { rate = "10mbit" }"#, "delay"),
            (
                r#"link = { rate = "10mbit", delay = "5ms", jitter = "6ms" }"#,
                "jitter",
            ),
            (
                r#"link = { rate = "10mbit", delay = "5ms", loss = "1" }"#,
                "loss",
            ),
            (r#"link = "moon""#, "moon"),
        ] {
            let e = toml::from_str::<Wrap>(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn link_round_trips_through_toml_and_json() {
        #[derive(Serialize, Deserialize, Debug, PartialEq)]
        struct Wrap {
            topology: Topology,
        }
        let text = r#"
            [topology]
            kind = "per-pair"
            default = "consumer"
            pairs = [ { from = 0, to = 1, link = { rate = "2.5gbit", delay = "500us" } },
                      { from = 2, to = 0, link = { scenario = "internet", delay = "80ms" }, directed = true } ]
        "#;
        let w: Wrap = toml::from_str(text).unwrap();
        let m = w.topology.resolve(3).unwrap();
        assert_eq!(m.get(0, 1).unwrap().rate_bps, 2_500_000_000);
        assert_eq!(m.get(1, 0).unwrap().delay, Duration::from_micros(500));
        assert_eq!(
            m.get(2, 0).unwrap(),
            LinkSpec {
                rate_bps: 50_000_000,
                delay: ms(80),
                jitter: ms(5)
            }
        );
        assert_eq!(
            m.get(0, 2).unwrap(),
            LinkSpec::scenario("consumer").unwrap()
        );
        assert_eq!(m.get(1, 1), None);
        let json = serde_json::to_string(&w).unwrap();
        let back: Wrap = serde_json::from_str(&json).unwrap();
        assert_eq!(back, w);
        let toml_back: Wrap = toml::from_str(&toml::to_string(&w).unwrap()).unwrap();
        assert_eq!(toml_back, w);
    }

    #[test]
    fn per_site_links_combine_up_down_and_delays() {
        let topo = Topology::PerSite {
            sites: vec![
                SiteAccess {
                    up: 100_000_000,
                    down: 1_000_000_000,
                    delay: ms(5),
                    jitter: ms(1),
                },
                SiteAccess {
                    up: 1_000_000_000,
                    down: 50_000_000,
                    delay: ms(20),
                    jitter: ms(0),
                },
            ],
        };
        let m = topo.resolve(2).unwrap();
        assert_eq!(
            m.get(0, 1).unwrap(),
            LinkSpec {
                rate_bps: 50_000_000,
                delay: ms(25),
                jitter: ms(1)
            }
        );
        assert_eq!(
            m.get(1, 0).unwrap(),
            LinkSpec {
                rate_bps: 1_000_000_000,
                delay: ms(25),
                jitter: ms(1)
            }
        );
        assert!(topo
            .resolve(3)
            .unwrap_err()
            .to_string()
            .contains("lists 2 sites"));
    }

    #[test]
    fn per_pair_without_default_must_cover_all_pairs() {
        let link = LinkSpec::scenario("lan").unwrap();
        let topo = Topology::PerPair {
            default: None,
            pairs: vec![PairLink {
                from: 0,
                to: 1,
                link,
                directed: false,
            }],
        };
        topo.resolve(2).unwrap();
        assert!(topo.resolve(3).unwrap_err().to_string().contains("0 → 2"));
        let dup = Topology::PerPair {
            default: None,
            pairs: vec![
                PairLink {
                    from: 0,
                    to: 1,
                    link,
                    directed: false,
                },
                PairLink {
                    from: 1,
                    to: 0,
                    link,
                    directed: true,
                },
            ],
        };
        assert!(dup.resolve(2).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn serialisation_time_is_exact() {
        let l = LinkSpec::new(100_000_000, ms(0), ms(0)).unwrap();
        assert_eq!(l.serialisation_time(12_500_000), Duration::from_secs(1));
        assert_eq!(l.serialisation_time(1), Duration::from_nanos(80));
        let l = LinkSpec::new(3_000, ms(0), ms(0)).unwrap();
        // 8e9 / 3000 = 2_666_666.67 ns, rounded up.
        assert_eq!(l.serialisation_time(1), Duration::from_nanos(2_666_667));
    }
}
