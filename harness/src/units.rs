//! Quantities as users write them: rates (`100mbit`), byte sizes (`64MiB`) and durations
//! (`25ms`), parsed exactly (no floating point: `2.5gbit` is 2 500 000 000 bit/s) and printed
//! back losslessly, so a value survives TOML → struct → JSON worker argument → struct.
//!
//! - Rates are decimal SI bits per second: `bit`, `kbit` (10³), `mbit` (10⁶), `gbit` (10⁹),
//!   `tbit` (10¹²), case-insensitive, optionally followed by `/s`. A rate must be a positive
//!   whole number of bit/s. (`mbps` is refused on purpose: `tc` reads it as megabytes.)
//! - Byte sizes: `B`, decimal `KB MB GB TB` (10³ⁿ) and binary `KiB MiB GiB TiB` (2¹⁰ⁿ),
//!   case-insensitive; a bare integer is bytes. Must be a whole number of bytes.
//! - Durations: `ns`, `us` (or `µs`), `ms`, `s`; a unit is required; never negative; must be
//!   a whole number of nanoseconds.
//!
//! Errors are one line: the kind of value, the value, why, and what is allowed.

use std::time::Duration;

/// A value a user wrote that is not a valid rate, size or duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} `{value}`: {reason}; allowed: {allowed}")]
pub struct UnitError {
    /// What was being parsed: "rate", "size", "duration".
    pub kind: &'static str,
    /// The text as written.
    pub value: String,
    /// Why it was refused.
    pub reason: String,
    /// What would have been accepted.
    pub allowed: &'static str,
}

const RATE_ALLOWED: &str =
    "a positive number with unit bit, kbit, mbit, gbit or tbit (e.g. 800kbit, 100mbit, 2.5gbit)";
const SIZE_ALLOWED: &str =
    "a whole number of bytes, optionally with unit B, KB, MB, GB, TB, KiB, MiB, GiB, TiB (e.g. 64MiB, 1GB)";
const DURATION_ALLOWED: &str =
    "a non-negative number with unit ns, us, ms or s (e.g. 500us, 25ms, 1s)";

fn err(
    kind: &'static str,
    value: &str,
    reason: impl Into<String>,
    allowed: &'static str,
) -> UnitError {
    UnitError {
        kind,
        value: value.to_string(),
        reason: reason.into(),
        allowed,
    }
}

/// Splits `"2.5gbit"` into `("2.5", "gbit")`: the number is the leading run of digits,
/// `.`, `+`, `-`; the unit is the rest, trimmed and lower-cased.
fn split_number_unit(text: &str) -> (&str, String) {
    let t = text.trim();
    let end = t
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.' || *c == '-' || *c == '+' || *c == '_'))
        .map(|(i, _)| i)
        .unwrap_or(t.len());
    (&t[..end], t[end..].trim().to_ascii_lowercase())
}

/// Exact value of a non-negative decimal `number` times `multiplier`, or why not.
/// `Ok(None)` means the product is not a whole number.
fn scaled_decimal(number: &str, multiplier: u128) -> Result<Option<u128>, String> {
    let number = number.replace('_', "");
    if number.starts_with('-') {
        return Err("must not be negative".into());
    }
    let number = number.strip_prefix('+').unwrap_or(&number);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if (int_part.is_empty() && frac_part.is_empty())
        || !int_part.chars().all(|c| c.is_ascii_digit())
        || !frac_part.chars().all(|c| c.is_ascii_digit())
    {
        return Err("not a number".into());
    }
    if frac_part.len() > 30 || int_part.len() > 30 {
        return Err("too many digits".into());
    }
    let int: u128 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().map_err(|_| "not a number")?
    };
    let frac: u128 = if frac_part.is_empty() {
        0
    } else {
        frac_part.parse().map_err(|_| "not a number")?
    };
    let denom = 10u128.pow(frac_part.len() as u32);
    let whole = int.checked_mul(multiplier).ok_or("too large")?;
    let frac_scaled = frac.checked_mul(multiplier).ok_or("too large")?;
    if frac_scaled % denom != 0 {
        return Ok(None);
    }
    Ok(Some(
        whole.checked_add(frac_scaled / denom).ok_or("too large")?,
    ))
}

/// Parses a rate such as `100mbit` into bits per second. Zero is refused.
pub fn parse_rate_bps(text: &str) -> Result<u64, UnitError> {
    let (number, unit) = split_number_unit(text);
    let unit = unit.strip_suffix("/s").unwrap_or(&unit).to_string();
    let multiplier: u128 = match unit.as_str() {
        "bit" => 1,
        "kbit" => 1_000,
        "mbit" => 1_000_000,
        "gbit" => 1_000_000_000,
        "tbit" => 1_000_000_000_000,
        "" => return Err(err("rate", text, "missing unit", RATE_ALLOWED)),
        "bps" | "kbps" | "mbps" | "gbps" => {
            return Err(err(
                "rate",
                text,
                format!("unit `{unit}` is ambiguous (bits or bytes?)"),
                RATE_ALLOWED,
            ))
        }
        other => {
            return Err(err(
                "rate",
                text,
                format!("unknown unit `{other}`"),
                RATE_ALLOWED,
            ))
        }
    };
    let bits = scaled_decimal(number, multiplier)
        .map_err(|reason| err("rate", text, reason, RATE_ALLOWED))?
        .ok_or_else(|| err("rate", text, "not a whole number of bit/s", RATE_ALLOWED))?;
    if bits == 0 {
        return Err(err("rate", text, "must be greater than zero", RATE_ALLOWED));
    }
    u64::try_from(bits).map_err(|_| err("rate", text, "too large", RATE_ALLOWED))
}

/// Parses a byte size such as `64MiB` or `1GB` (a bare integer is bytes).
pub fn parse_bytes(text: &str) -> Result<u64, UnitError> {
    let (number, unit) = split_number_unit(text);
    let multiplier: u128 = match unit.as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(err(
                "size",
                text,
                format!("unknown unit `{other}`"),
                SIZE_ALLOWED,
            ))
        }
    };
    let bytes = scaled_decimal(number, multiplier)
        .map_err(|reason| err("size", text, reason, SIZE_ALLOWED))?
        .ok_or_else(|| err("size", text, "not a whole number of bytes", SIZE_ALLOWED))?;
    u64::try_from(bytes).map_err(|_| err("size", text, "too large", SIZE_ALLOWED))
}

/// Parses a duration such as `25ms`, `1s`, `500us`. Negative values are refused.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let (number, unit) = split_number_unit(text);
    let multiplier: u128 = match unit.as_str() {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "" => return Err(err("duration", text, "missing unit", DURATION_ALLOWED)),
        other => {
            return Err(err(
                "duration",
                text,
                format!("unknown unit `{other}`"),
                DURATION_ALLOWED,
            ))
        }
    };
    let nanos = scaled_decimal(number, multiplier)
        .map_err(|reason| err("duration", text, reason, DURATION_ALLOWED))?
        .ok_or_else(|| {
            err(
                "duration",
                text,
                "not a whole number of nanoseconds",
                DURATION_ALLOWED,
            )
        })?;
    let nanos =
        u64::try_from(nanos).map_err(|_| err("duration", text, "too large", DURATION_ALLOWED))?;
    Ok(Duration::from_nanos(nanos))
}

/// `value / unit` as an exact decimal string (`2500, 1000` → `"2.5"`).
fn exact_decimal(value: u128, unit: u128) -> String {
    let int = value / unit;
    let mut frac = value % unit;
    if frac == 0 {
        return int.to_string();
    }
    let mut digits = String::new();
    let mut scale = unit;
    while frac != 0 && scale > 1 {
        scale /= 10;
        digits.push(char::from(b'0' + (frac / scale) as u8));
        frac %= scale;
    }
    format!("{int}.{digits}")
}

/// Prints a rate losslessly in the largest unit that keeps it ≥ 1: `100mbit`, `2.5gbit`.
pub fn format_rate(rate_bps: u64) -> String {
    let r = rate_bps as u128;
    for (unit, name) in [
        (1_000_000_000_000u128, "tbit"),
        (1_000_000_000, "gbit"),
        (1_000_000, "mbit"),
        (1_000, "kbit"),
    ] {
        if r >= unit {
            return format!("{}{name}", exact_decimal(r, unit));
        }
    }
    format!("{r}bit")
}

/// Prints a duration losslessly: `25ms`, `1.5s`, `500us`, `0s`.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    for (unit, name) in [(1_000_000_000u128, "s"), (1_000_000, "ms"), (1_000, "us")] {
        if ns >= unit {
            return format!("{}{name}", exact_decimal(ns, unit));
        }
    }
    format!("{ns}ns")
}

/// Prints a byte count losslessly: binary units when exact (`64MiB`), else bytes.
pub fn format_bytes(bytes: u64) -> String {
    for (shift, name) in [(40u32, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        let unit = 1u64 << shift;
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{name}", bytes / unit);
        }
    }
    format!("{bytes}B")
}

/// serde helpers: a rate field written as a string (`rate = "100mbit"`).
pub mod serde_rate {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(rate_bps: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_rate(*rate_bps))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_rate_bps(&text).map_err(serde::de::Error::custom)
    }
}

/// serde helpers: a duration field written as a string (`delay = "25ms"`).
pub mod serde_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_exactly() {
        assert_eq!(parse_rate_bps("10mbit").unwrap(), 10_000_000);
        assert_eq!(parse_rate_bps("100mbit").unwrap(), 100_000_000);
        assert_eq!(parse_rate_bps("1gbit").unwrap(), 1_000_000_000);
        assert_eq!(parse_rate_bps("2.5gbit").unwrap(), 2_500_000_000);
        assert_eq!(parse_rate_bps("800kbit").unwrap(), 800_000);
        assert_eq!(parse_rate_bps("100Mbit/s").unwrap(), 100_000_000);
        assert_eq!(parse_rate_bps(" 1500bit ").unwrap(), 1500);
    }

    #[test]
    fn bad_rates_are_one_line_errors_naming_the_value() {
        for bad in [
            "0mbit",
            "0",
            "100",
            "-5mbit",
            "abc",
            "1.5bit",
            "100mbps",
            "10furlongs",
            "",
        ] {
            let e = parse_rate_bps(bad).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(&format!("`{bad}`")), "{msg}");
            assert!(msg.contains("allowed"), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
        assert!(parse_rate_bps("0mbit")
            .unwrap_err()
            .reason
            .contains("greater than zero"));
    }

    #[test]
    fn sizes_parse_exactly() {
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_bytes("1.5KiB").unwrap(), 1536);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("0B").unwrap(), 0);
        assert!(parse_bytes("1.1B").is_err());
        assert!(parse_bytes("3 bananas")
            .unwrap_err()
            .to_string()
            .contains("bananas"));
        assert!(parse_bytes("-1MiB").is_err());
    }

    #[test]
    fn durations_parse_exactly() {
        assert_eq!(parse_duration("25ms").unwrap(), Duration::from_millis(25));
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("500us").unwrap(), Duration::from_micros(500));
        assert_eq!(
            parse_duration("2.5ms").unwrap(),
            Duration::from_micros(2500)
        );
        assert_eq!(parse_duration("0ms").unwrap(), Duration::ZERO);
        let e = parse_duration("-5ms").unwrap_err();
        assert!(e.to_string().contains("negative"), "{e}");
        assert!(parse_duration("25")
            .unwrap_err()
            .reason
            .contains("missing unit"));
    }

    #[test]
    fn formatting_round_trips() {
        for r in [
            1u64,
            999,
            800_000,
            10_000_000,
            2_500_000_000,
            123_456_789,
            1_000_000_000_000,
        ] {
            assert_eq!(
                parse_rate_bps(&format_rate(r)).unwrap(),
                r,
                "{}",
                format_rate(r)
            );
        }
        assert_eq!(format_rate(2_500_000_000), "2.5gbit");
        for d in [
            0u64,
            1,
            999,
            1_000,
            500_000,
            25_000_000,
            1_500_000_000,
            123_456_789_012,
        ] {
            let d = Duration::from_nanos(d);
            assert_eq!(
                parse_duration(&format_duration(d)).unwrap(),
                d,
                "{}",
                format_duration(d)
            );
        }
        assert_eq!(format_duration(Duration::from_millis(25)), "25ms");
        for b in [0u64, 1, 1024, 64 << 20, 1_000_000_000, 3 << 30] {
            assert_eq!(parse_bytes(&format_bytes(b)).unwrap(), b);
        }
        assert_eq!(format_bytes(64 << 20), "64MiB");
    }
}
