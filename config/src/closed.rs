//! Closed sets of values in the file (`balance = "round_robin"`, `type = "tcp"`), read
//! straight into the model's enums by serde instead of matched by hand in validation.
//!
//! An unknown value is one located problem that names the choices (and the closest one, as for
//! unknown keys); the loader then drops that key and reads the rest of the section, so every
//! other problem is still reported and the default stands in for validation.

use crate::model::{
    AccessLogFormat, AcmeChallenge, AllUnhealthy, Balance, CheckKind, ConcurrencyKind, LogFormat,
    ProxyProtocolVersion, TlsVersion,
};

/// Implements `Deserialize` for an enum from its spellings in the file: `(text, variant,
/// what it means)`, the meaning shown in the error when not empty.
macro_rules! closed_set {
    ($ty:ty, $what:literal, [$(($text:literal, $variant:expr, $hint:literal)),+ $(,)?]) => {
        impl $ty {
            /// The spellings the file accepts.
            pub const CHOICES: &'static [(&'static str, $ty, &'static str)] =
                &[$(($text, $variant, $hint)),+];
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                find(&s, <$ty>::CHOICES, $what).map_err(serde::de::Error::custom)
            }
        }
    };
}

/// The variant spelled `s`, or the error (`what` starts it: "unknown balance") naming the
/// choices.
fn find<T: Copy>(s: &str, choices: &[(&str, T, &str)], what: &str) -> Result<T, String> {
    if let Some((_, v, _)) = choices.iter().find(|(t, _, _)| *t == s) {
        return Ok(*v);
    }
    let hint = crate::validate::suggest(s, choices.iter().map(|(t, _, _)| *t));
    let names: Vec<String> = choices
        .iter()
        .map(|(t, _, h)| match h {
            &"" => format!("{t:?}"),
            h => format!("{t:?} ({h})"),
        })
        .collect();
    let list = match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.concat(),
    };
    Err(format!("{what} {s:?}{hint}: expected {list}"))
}

/// `protocol` of an upstream or a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http,
    Https,
}

closed_set!(
    Protocol,
    "unknown protocol",
    [("http", Protocol::Http, ""), ("https", Protocol::Https, "")]
);
closed_set!(
    LogFormat,
    "unknown log format",
    [("text", LogFormat::Text, ""), ("json", LogFormat::Json, "")]
);
closed_set!(
    AccessLogFormat,
    "unknown access log format",
    [
        ("text", AccessLogFormat::Text, ""),
        ("json", AccessLogFormat::Json, ""),
        ("combined", AccessLogFormat::Combined, ""),
    ]
);
closed_set!(
    Balance,
    "unknown balance",
    [
        ("round_robin", Balance::RoundRobin, ""),
        ("least_requests", Balance::LeastRequests, ""),
        ("random", Balance::Random, ""),
        ("consistent_hash", Balance::ConsistentHash, ""),
    ]
);
closed_set!(
    AllUnhealthy,
    "unknown value",
    [
        (
            "fail_open",
            AllUnhealthy::FailOpen,
            "use every backend anyway"
        ),
        ("refuse", AllUnhealthy::Refuse, "answer 503"),
    ]
);
closed_set!(
    CheckKind,
    "unknown check type",
    [("http", CheckKind::Http, ""), ("tcp", CheckKind::Tcp, "")]
);
closed_set!(
    ConcurrencyKind,
    "unknown concurrency type",
    [
        ("requests", ConcurrencyKind::Requests, ""),
        ("connections", ConcurrencyKind::Connections, ""),
    ]
);
closed_set!(
    AcmeChallenge,
    "unknown challenge",
    [
        ("tls-alpn-01", AcmeChallenge::TlsAlpn01, ""),
        ("http-01", AcmeChallenge::Http01, ""),
    ]
);
closed_set!(
    TlsVersion,
    "unsupported TLS version",
    [
        ("1.2", TlsVersion::Tls12, ""),
        ("1.3", TlsVersion::Tls13, "")
    ]
);
closed_set!(
    ProxyProtocolVersion,
    "unknown PROXY protocol version",
    [
        ("v1", ProxyProtocolVersion::V1, ""),
        ("v2", ProxyProtocolVersion::V2, "")
    ]
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_and_errors() {
        assert_eq!(
            find("random", Balance::CHOICES, "unknown balance"),
            Ok(Balance::Random)
        );
        let e = find("round_robbin", Balance::CHOICES, "unknown balance").unwrap_err();
        assert!(e.starts_with("unknown balance \"round_robbin\""), "{e}");
        assert!(e.contains("round_robin"), "{e}");
        assert!(e.ends_with("\"random\" or \"consistent_hash\""), "{e}");
        let e = find("panic", AllUnhealthy::CHOICES, "unknown value").unwrap_err();
        assert!(
            e.ends_with(
                "expected \"fail_open\" (use every backend anyway) or \"refuse\" (answer 503)"
            ),
            "{e}"
        );
    }
}
