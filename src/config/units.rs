//! Human-readable sizes ("16MiB", "0") and durations ("5s", "1m 30s") used in the config file.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// A byte count written as a number or a string with a unit (B, KB, MB, GB, KiB, MiB, GiB, TiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

/// A duration written as a string such as "500ms", "5s", "2m" or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "unknown size unit {unit:?} in {text:?}: use B, KB, MB, GB, KiB, MiB or GiB, e.g. \"16MiB\""
            ));
        }
    };
    let value: f64 = num.parse().map_err(|_| {
        format!("{text:?} is not a size: write a number with an optional unit, e.g. \"16MiB\" or \"0\"")
    })?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("{text:?} is not a size: it must be zero or more"));
    }
    Ok((value * mult as f64).round() as u64)
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Text(String),
        }
        let raw = Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a size: a number of bytes or a string such as \"16MiB\"")
        })?;
        match raw {
            Raw::Int(n) if n >= 0 => Ok(Size(n as u64)),
            Raw::Int(n) => Err(serde::de::Error::custom(format!("size {n} is negative"))),
            Raw::Text(s) => parse_size(&s).map(Size).map_err(serde::de::Error::custom),
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        let raw = Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a duration: a string such as \"5s\" or \"500ms\""))?;
        match raw {
            Raw::Int(n) => Ok(Dur(Duration::from_secs(n))),
            Raw::Text(s) => humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
                serde::de::Error::custom(format!(
                    "{s:?} is not a duration ({e}): write e.g. \"5s\", \"500ms\" or \"2m\""
                ))
            }),
        }
    }
}

/// Formats a byte count for people: "0 B", "1.5 KiB", "16.0 MiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.1} {}", UNITS[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("8 MiB"), Ok(8 << 20));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("50MB"), Ok(50_000_000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }

    #[test]
    fn bytes_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(16 << 20), "16.0 MiB");
    }
}
