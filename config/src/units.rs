//! Durations (`"10s"`, `"1m30s"`, `"800ms"`), byte sizes (`"1MiB"`) and lenient integers.
//!
//! These are the value types of the file model. Numbers may also be written as strings so that
//! `threads = "${THREADS:-2}"` works after environment expansion.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// Parses a duration: one or more `<integer><unit>` parts, units `ms`, `s`, `m`, `h`, `d`.
///
/// `"0"` is accepted as zero. Whitespace is not allowed inside the value.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let usage = || {
        format!("invalid duration {s:?}: expected a number with a unit, like \"10s\", \"500ms\", \"1m30s\" (units: ms, s, m, h, d)")
    };
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(usage());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(usage());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| usage())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => n
                .checked_mul(60)
                .map(Duration::from_secs)
                .ok_or_else(usage)?,
            "h" => n
                .checked_mul(3600)
                .map(Duration::from_secs)
                .ok_or_else(usage)?,
            "d" => n
                .checked_mul(86_400)
                .map(Duration::from_secs)
                .ok_or_else(usage)?,
            _ => return Err(usage()),
        };
        total = total.checked_add(part).ok_or_else(usage)?;
    }
    // Deadlines are computed as `now + duration`: a value near `u64::MAX` seconds would
    // overflow the clock. Ten years is longer than any timeout means.
    if total > MAX_DURATION {
        return Err(format!("duration {s:?} is too large (at most 3650d)"));
    }
    Ok(total)
}

/// Longest duration a config accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

/// Parses a byte size: an integer with an optional unit. `K`/`KB`/`KiB` = 1024 bytes,
/// `M`/`MB`/`MiB` = 1024², `G`/`GB`/`GiB` = 1024³ (binary, as nginx and HAProxy count).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let usage = || {
        format!("invalid size {s:?}: expected a number of bytes with an optional unit, like \"64KiB\", \"1MiB\" (units: B, KiB, MiB, GiB)")
    };
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(usage());
    }
    let n: u64 = s[..digits].parse().map_err(|_| usage())?;
    let mult: u64 = match s[digits..].trim_start() {
        "" | "B" | "b" => 1,
        "K" | "k" | "KB" | "kB" | "KiB" | "kb" => 1 << 10,
        "M" | "m" | "MB" | "MiB" | "mb" => 1 << 20,
        "G" | "g" | "GB" | "GiB" | "gb" => 1 << 30,
        _ => return Err(usage()),
    };
    n.checked_mul(mult).ok_or_else(usage)
}

/// Formats a duration the way it is written in config (`1m30s`, `500ms`).
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0".into();
    }
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// A duration in the file model, written as a string such as `"10s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string like \"10s\" or \"500ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                if v == 0 {
                    Ok(Dur(Duration::ZERO))
                } else {
                    Err(E::custom(format!(
                        "a bare number is ambiguous for a duration: write \"{v}s\" or \"{v}ms\""
                    )))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A byte size in the file model: an integer or a string such as `"1MiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size like \"64KiB\" or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
        }
        d.deserialize_any(V)
    }
}

/// An integer that may also be written as a string (for `${VAR}` expansion).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int<T>(pub T);

impl<'de, T> Deserialize<'de> for Int<T>
where
    T: FromStr + TryFrom<i64>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<T: FromStr + TryFrom<i64>> Visitor<'_> for V<T> {
            type Value = Int<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int<T>, E> {
                T::try_from(v)
                    .map(Int)
                    .map_err(|_| E::custom(format!("{v} is out of range")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Int<T>, E> {
                v.trim()
                    .parse()
                    .map(Int)
                    .map_err(|_| E::custom(format!("expected a whole number, found {v:?}")))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A boolean that may also be written as a string (`"true"`, `"false"`, `"1"`, `"0"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Flag;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true or false")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Flag, E> {
                Ok(Flag(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Flag, E> {
                match v.trim() {
                    "true" | "1" | "yes" | "on" => Ok(Flag(true)),
                    "false" | "0" | "no" | "off" | "" => Ok(Flag(false)),
                    _ => Err(E::custom(format!("expected true or false, found {v:?}"))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_duration_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn parse_duration_compound() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h1m1s"), Ok(Duration::from_secs(3661)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn parse_duration_rejects_what_would_overflow_a_deadline() {
        assert!(parse_duration("3650d").is_ok());
        let e = parse_duration("3651d").unwrap_err();
        assert!(e.contains("too large"), "{e}");
        assert!(parse_duration("213503982334601d").is_err());
    }

    #[test]
    fn parse_duration_rejects() {
        for bad in [
            "",
            "s",
            "10",
            "10 s",
            " 10s",
            "10S",
            "1.5s",
            "-1s",
            "10sec",
            "ms",
            "10s ",
            "1x",
            "99999999999999999999s",
            "999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn parse_size_units() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("64KB"), Ok(65_536));
        assert_eq!(parse_size("64k"), Ok(65_536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
    }

    #[test]
    fn parse_size_rejects() {
        for bad in [
            "",
            "MiB",
            "-1",
            "1.5MiB",
            "1TiB",
            "1 M B",
            "99999999999999999999",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn format_duration_round_trips() {
        for s in ["0", "500ms", "1s", "1m30s", "2h", "1d1h1m1s", "1500ms"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }
}
