//! Reading replay instructions: the `fly-replay` response header and the
//! `application/vnd.fly.replay+json` body, and writing the `fly-replay-src` and
//! `fly-replay-failed` request headers.
//!
//! Header syntax: `key=value` pairs separated by `;`; values may be quoted, and a list (only
//! `region` takes one) must be: `region="sjc,any";app=target-app`.

use std::time::Duration;

use serde::Deserialize;

/// Where an instruction sends the request back to when its target cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Only the issuing instance.
    ForceSelf,
    /// The issuing instance first, else any instance of the original upstream.
    PreferSelf,
}

/// Request rewrites of the JSON form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transform {
    /// New path (and query) for the replayed request.
    pub path: Option<String>,
    /// Headers removed (lower case).
    pub delete_headers: Vec<String>,
    /// Headers set.
    pub set_headers: Vec<(String, String)>,
}

/// A replay instruction from an upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Instruction {
    /// Regions in order; forced unless `any_region`.
    pub regions: Vec<String>,
    /// The list ended with `any`: other regions may answer too.
    pub any_region: bool,
    /// Only this instance may answer.
    pub instance: Option<String>,
    /// This instance if usable, else any matching the other fields.
    pub prefer_instance: Option<String>,
    /// Another upstream (by name).
    pub app: Option<String>,
    /// Opaque, copied into `fly-replay-src`.
    pub state: Option<String>,
    /// Exclude the responding instance.
    pub elsewhere: bool,
    /// How long to keep trying to reach the target.
    pub timeout: Option<Duration>,
    /// What to do when the target cannot be reached.
    pub fallback: Option<Fallback>,
    /// Request rewrites (JSON form only).
    pub transform: Option<Transform>,
}

impl Instruction {
    /// Whether the instruction names any target at all.
    pub fn has_target(&self) -> bool {
        !self.regions.is_empty()
            || self.any_region
            || self.instance.is_some()
            || self.prefer_instance.is_some()
            || self.app.is_some()
            || self.elsewhere
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Splits `a=1;b="x;y"` into pairs, honouring quotes.
fn pairs(input: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = input.trim();
    while !rest.is_empty() {
        let eq = rest
            .find(['=', ';'])
            .filter(|&i| rest.as_bytes()[i] == b'=')
            .ok_or_else(|| format!("expected key=value in {rest:?}"))?;
        let key = rest[..eq].trim().to_ascii_lowercase();
        if key.is_empty() {
            return Err("empty key".to_string());
        }
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(q) = rest.strip_prefix('"') {
            let end = q
                .find('"')
                .ok_or_else(|| format!("unterminated quote in value of {key}"))?;
            value = q[..end].to_string();
            rest = q[end + 1..].trim_start();
            match rest.strip_prefix(';') {
                Some(r) => rest = r.trim_start(),
                None if rest.is_empty() => {}
                None => return Err(format!("unexpected {rest:?} after quoted value of {key}")),
            }
        } else {
            let end = rest.find(';').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = rest.get(end + 1..).unwrap_or("").trim_start();
        }
        out.push((key, value));
    }
    Ok(out)
}

fn parse_timeout(v: &str) -> Result<Duration, String> {
    portico_config::units::parse_duration(v.trim())
        .map_err(|_| format!("invalid timeout {v:?} (expected e.g. \"10s\" or \"800ms\")"))
}

fn parse_fallback(v: &str) -> Result<Fallback, String> {
    match v.trim() {
        "force_self" => Ok(Fallback::ForceSelf),
        "prefer_self" => Ok(Fallback::PreferSelf),
        other => Err(format!(
            "invalid fallback {other:?} (expected force_self or prefer_self)"
        )),
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool, String> {
    match v.trim() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        other => Err(format!("invalid {key} {other:?} (expected true or false)")),
    }
}

fn set_regions(inst: &mut Instruction, list: &str) -> Result<(), String> {
    for r in list.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        if r.eq_ignore_ascii_case("any") {
            inst.any_region = true;
        } else if valid_name(r) {
            let r = r.to_ascii_lowercase();
            if !inst.regions.contains(&r) {
                inst.regions.push(r);
            }
        } else {
            return Err(format!("invalid region {r:?}"));
        }
    }
    Ok(())
}

fn check(inst: Instruction) -> Result<Instruction, String> {
    if let (Some(_), Some(_)) = (&inst.instance, &inst.prefer_instance) {
        return Err("instance and prefer_instance cannot both be set".to_string());
    }
    for (k, v) in [
        ("instance", &inst.instance),
        ("prefer_instance", &inst.prefer_instance),
        ("app", &inst.app),
    ] {
        if let Some(v) = v {
            if !valid_name(v) {
                return Err(format!("invalid {k} {v:?}"));
            }
        }
    }
    if let Some(s) = &inst.state {
        if s.len() > 1024 || s.bytes().any(|b| b < 0x20 || b == 0x7f || b == b';') {
            return Err("state must be at most 1024 printable characters without ';'".to_string());
        }
    }
    if !inst.has_target() {
        return Err(
            "no target (expected region, instance, prefer_instance, app or elsewhere)".to_string(),
        );
    }
    Ok(inst)
}

/// Parses a `fly-replay` header value.
pub fn parse_header(value: &str) -> Result<Instruction, String> {
    let mut inst = Instruction::default();
    for (key, value) in pairs(value)? {
        match key.as_str() {
            "region" => set_regions(&mut inst, &value)?,
            "instance" => inst.instance = Some(value.to_ascii_lowercase()),
            "prefer_instance" => inst.prefer_instance = Some(value.to_ascii_lowercase()),
            "app" => inst.app = Some(value),
            "state" => inst.state = Some(value),
            "elsewhere" => inst.elsewhere = parse_bool("elsewhere", &value)?,
            "timeout" => inst.timeout = Some(parse_timeout(&value)?),
            "fallback" => inst.fallback = Some(parse_fallback(&value)?),
            // Unknown fields are ignored, so apps written for newer edges keep working.
            _ => {}
        }
    }
    check(inst)
}

#[derive(Deserialize)]
struct JsonHeader {
    name: String,
    value: String,
}

#[derive(Deserialize)]
struct JsonTransform {
    path: Option<String>,
    #[serde(default)]
    delete_headers: Vec<String>,
    #[serde(default)]
    set_headers: Vec<JsonHeader>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonRegion {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct JsonInstruction {
    region: Option<JsonRegion>,
    instance: Option<String>,
    prefer_instance: Option<String>,
    app: Option<String>,
    state: Option<String>,
    #[serde(default)]
    elsewhere: bool,
    timeout: Option<String>,
    fallback: Option<String>,
    transform: Option<JsonTransform>,
}

/// Parses the body of an `application/vnd.fly.replay+json` response.
pub fn parse_json(body: &[u8]) -> Result<Instruction, String> {
    let j: JsonInstruction =
        serde_json::from_slice(body).map_err(|e| format!("invalid replay JSON: {e}"))?;
    let mut inst = Instruction {
        instance: j.instance.map(|s| s.to_ascii_lowercase()),
        prefer_instance: j.prefer_instance.map(|s| s.to_ascii_lowercase()),
        app: j.app,
        state: j.state,
        elsewhere: j.elsewhere,
        ..Default::default()
    };
    match j.region {
        Some(JsonRegion::One(r)) => set_regions(&mut inst, &r)?,
        Some(JsonRegion::Many(list)) => set_regions(&mut inst, &list.join(","))?,
        None => {}
    }
    if let Some(t) = j.timeout {
        inst.timeout = Some(parse_timeout(&t)?);
    }
    if let Some(f) = j.fallback {
        inst.fallback = Some(parse_fallback(&f)?);
    }
    if let Some(t) = j.transform {
        if let Some(p) = &t.path {
            if !p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(format!("invalid transform.path {p:?}"));
            }
        }
        let mut set_headers = Vec::new();
        for h in t.set_headers {
            if !portico_config::is_token(&h.name) || h.value.bytes().any(|b| b < 0x20 && b != b'\t')
            {
                return Err(format!(
                    "invalid header in transform.set_headers: {:?}",
                    h.name
                ));
            }
            set_headers.push((h.name.to_ascii_lowercase(), h.value));
        }
        let mut delete_headers = Vec::new();
        for h in t.delete_headers {
            if !portico_config::is_token(&h) {
                return Err(format!("invalid header in transform.delete_headers: {h:?}"));
            }
            delete_headers.push(h.to_ascii_lowercase());
        }
        inst.transform = Some(Transform {
            path: t.path,
            delete_headers,
            set_headers,
        });
    }
    check(inst)
}

/// `fly-replay-src: instance=<id>;region=<region>;t=<µs>;state=<state>`.
pub fn replay_src(instance: &str, region: &str, t_us: u128, state: Option<&str>) -> String {
    let mut v = format!("instance={instance};region={region};t={t_us}");
    if let Some(s) = state {
        v.push_str(";state=");
        v.push_str(s);
    }
    v
}

/// Why a fallback fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// The instruction's timeout passed.
    Timeout,
    /// Every candidate failed.
    RetriesExhausted,
    /// No instance matched the instruction.
    NoCandidate,
}

impl FailReason {
    /// The value in `fly-replay-failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::Timeout => "timeout",
            FailReason::RetriesExhausted => "retries_exhausted",
            FailReason::NoCandidate => "no_candidate",
        }
    }
}

/// `fly-replay-failed: instance=..;app=..;region=..;reason=..;elapsed_ms=..`.
pub fn replay_failed(
    instance: Option<&str>,
    app: &str,
    region: Option<&str>,
    reason: FailReason,
    elapsed: Duration,
) -> String {
    format!(
        "instance={};app={app};region={};reason={};elapsed_ms={}",
        instance.unwrap_or(""),
        region.unwrap_or(""),
        reason.as_str(),
        elapsed.as_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields() {
        let i = parse_header("region=sjc").unwrap();
        assert_eq!(i.regions, vec!["sjc"]);
        assert!(!i.any_region);
        let i = parse_header("region=\"sjc,any\";app=target-app").unwrap();
        assert_eq!(i.regions, vec!["sjc"]);
        assert!(i.any_region);
        assert_eq!(i.app.as_deref(), Some("target-app"));
        let i = parse_header(" instance=ABC123 ; state=step-2 ; elsewhere=true ").unwrap();
        assert_eq!(i.instance.as_deref(), Some("abc123"));
        assert_eq!(i.state.as_deref(), Some("step-2"));
        assert!(i.elsewhere);
        let i = parse_header("region=iad,ord;timeout=800ms;fallback=prefer_self").unwrap();
        assert_eq!(i.regions, vec!["iad", "ord"]);
        assert_eq!(i.timeout, Some(Duration::from_millis(800)));
        assert_eq!(i.fallback, Some(Fallback::PreferSelf));
        let i = parse_header("prefer_instance=x;region=any;future_field=1").unwrap();
        assert_eq!(i.prefer_instance.as_deref(), Some("x"));
        assert!(i.any_region && i.regions.is_empty());
        let i = parse_header("elsewhere=true").unwrap();
        assert!(i.has_target());
        let i = parse_header("region=\"iad;ord\"");
        assert!(
            i.is_err(),
            "a ';' inside a quoted region list is not a region"
        );
    }

    #[test]
    fn malformed_headers() {
        for bad in [
            "",
            "region",
            "=sjc",
            "region=\"sjc",
            "region=\"sjc\"x",
            "timeout=fast;region=sjc",
            "fallback=maybe;region=sjc",
            "elsewhere=perhaps",
            "instance=a;prefer_instance=b",
            "region=s j c",
            "app=bad/name",
            "state=a",
            "region=sjc;state=\"a\x01\"",
        ] {
            assert!(parse_header(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn json_form() {
        let i = parse_json(br#"{"region":"sjc,any","app":"b","state":"s","elsewhere":true,"timeout":"5s","fallback":"force_self",
            "transform":{"path":"/v2/x?y=1","delete_headers":["Cookie"],"set_headers":[{"name":"X-A","value":"1"}]}}"#).unwrap();
        assert_eq!(i.regions, vec!["sjc"]);
        assert!(i.any_region && i.elsewhere);
        assert_eq!(i.fallback, Some(Fallback::ForceSelf));
        let t = i.transform.unwrap();
        assert_eq!(t.path.as_deref(), Some("/v2/x?y=1"));
        assert_eq!(t.delete_headers, vec!["cookie"]);
        assert_eq!(t.set_headers, vec![("x-a".to_string(), "1".to_string())]);
        let i = parse_json(br#"{"region":["iad","ord"]}"#).unwrap();
        assert_eq!(i.regions, vec!["iad", "ord"]);
        for bad in [
            &b"not json"[..],
            br#"{}"#,
            br#"{"region":5}"#,
            br#"{"region":"iad","transform":{"path":"no-slash"}}"#,
            br#"{"region":"iad","transform":{"set_headers":[{"name":"bad name","value":"x"}]}}"#,
            br#"{"region":"iad","timeout":"soon"}"#,
        ] {
            assert!(
                parse_json(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn request_headers() {
        assert_eq!(
            replay_src("abc", "ams", 1700000000123456, Some("x")),
            "instance=abc;region=ams;t=1700000000123456;state=x"
        );
        assert_eq!(
            replay_src("abc", "ams", 5, None),
            "instance=abc;region=ams;t=5"
        );
        assert_eq!(
            replay_failed(
                Some("abc"),
                "web",
                Some("ams"),
                FailReason::NoCandidate,
                Duration::from_millis(12)
            ),
            "instance=abc;app=web;region=ams;reason=no_candidate;elapsed_ms=12"
        );
    }
}
