//! The admin listener's HTML status page (`GET /`): the `/status` document laid out for a
//! person — listeners and their open connections, upstreams with regions and discovery, every
//! backend's health and load, routes, ACME certificates, and the latest reloads.
//!
//! It is rendered from the same JSON value as `/status`, after redaction, so a caller without
//! the admin token sees exactly what the redacted JSON shows and nothing more. The page is
//! static HTML: no script, no external resource (served with a CSP that forbids both), and
//! refreshes itself every few seconds with `<meta http-equiv="refresh">`. Every value from the
//! document is escaped (backend ids come from DNS answers and config files).

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Seconds between the page's automatic refreshes.
pub const REFRESH_SECONDS: u32 = 5;

/// The Content-Security-Policy the page is served with: inline styles only.
pub const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; form-action 'none'";

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON value as escaped cell text: strings as they are, numbers trimmed, null as "–".
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "–".to_string(),
        Value::String(s) => escape(s),
        Value::Bool(b) => if *b { "yes" } else { "no" }.to_string(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.1}"),
            _ => n.to_string(),
        },
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(", "),
        Value::Object(_) => escape(&v.to_string()),
    }
}

/// How long ago a UNIX time was, for a person ("4 s ago", "3 min ago", "2 h ago").
fn ago(unix: &Value, now: f64) -> String {
    let Some(t) = unix.as_f64() else {
        return "–".to_string();
    };
    let s = (now - t).max(0.0) as u64;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        7200..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

/// A duration in seconds for a person.
fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} days {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The CSS class of a health state, for colour.
fn state_class(state: &str) -> &'static str {
    match state {
        "up" | "reloaded" | "issued" | "stored" => "ok",
        "pending" | "placeholder" => "warn",
        _ => "bad",
    }
}

fn table(out: &mut String, class: &str, heads: &[&str], rows: &[Vec<String>]) {
    let _ = write!(out, "<table class=\"{class}\"><thead><tr>");
    for h in heads {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr></thead><tbody>");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            // Cells are escaped (or built from escaped parts) by the caller.
            let _ = write!(out, "<td>{c}</td>");
        }
        out.push_str("</tr>");
    }
    if rows.is_empty() {
        let _ = write!(
            out,
            "<tr><td colspan=\"{}\" class=\"none\">none</td></tr>",
            heads.len()
        );
    }
    out.push_str("</tbody></table>");
}

fn badge(state: &str) -> String {
    format!(
        "<span class=\"state {}\">{}</span>",
        state_class(state),
        escape(state)
    )
}

/// Renders the page from a `/status` document. `full` is false when the document was redacted
/// (the page then says how to see everything).
pub fn render(status: &Value, full: bool) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut o = String::with_capacity(16 * 1024);
    let server = &status["server"];
    let config = &status["config"];
    let title = match server["name"].as_str() {
        Some(n) if !n.is_empty() => format!("Portico · {}", escape(n)),
        _ => "Portico".to_string(),
    };
    let _ = write!(
        o,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>{title}</title><style>{STYLE}</style></head><body>"
    );
    let _ = write!(o, "<header><h1>{title}</h1><p id=\"summary\">");
    let _ = write!(
        o,
        "version {} ({}) · region {} · up {} · config generation <span id=\"generation\">{}</span> from {} · {} worker threads",
        cell(&status["version"]),
        cell(&status["commit"]),
        cell(&server["region"]),
        duration(status["uptime_seconds"].as_f64().unwrap_or(0.0)),
        cell(&config["generation"]),
        cell(&config["source"]),
        cell(&server["threads"]),
    );
    if status["draining"].as_bool() == Some(true) {
        o.push_str(" · <span class=\"state bad\">draining</span>");
    }
    let short = server["open_files_limit"].as_u64() < server["open_files_needed"].as_u64();
    let _ = write!(
        o,
        "</p><p><span class=\"{}\">open files limit {}</span> (hard {}, needed {}) · refreshes every {REFRESH_SECONDS} s</p>",
        if short { "state warn" } else { "" },
        cell(&server["open_files_limit"]),
        cell(&server["open_files_hard_limit"]),
        cell(&server["open_files_needed"]),
    );
    if let Some(e) = config["last_reload_error"].as_str() {
        let _ = write!(
            o,
            "<p class=\"alert\" id=\"reload-error\">The last reload failed ({}); the running configuration stayed:<br><code>{}</code></p>",
            ago(&config["last_reload_error_at_unix"], now),
            escape(e)
        );
    }
    if !full {
        o.push_str(
            "<p class=\"alert\" id=\"redacted\">Addresses, paths and errors are hidden: this \
             admin has a token and the request did not carry it (<code>Authorization: Bearer \
             &lt;admin.token&gt;</code>, e.g. <code>curl -H</code> on <code>/status</code>).</p>",
        );
    }
    o.push_str("</header>");

    o.push_str("<section id=\"listeners\"><h2>Listeners</h2>");
    let rows: Vec<Vec<String>> = status["listeners"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|l| {
            vec![
                cell(&l["name"]),
                cell(&l["address"]),
                cell(&l["tls"]),
                cell(&l["connections_open"]),
            ]
        })
        .collect();
    table(
        &mut o,
        "listeners",
        &["name", "address", "TLS", "open connections"],
        &rows,
    );
    o.push_str("</section>");

    o.push_str("<section id=\"upstreams\"><h2>Upstreams</h2>");
    for u in status["upstreams"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let backends = u["backends"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let healthy = backends
            .iter()
            .filter(|b| b["state"].as_str() == Some("up"))
            .count();
        let _ = write!(
            o,
            "<article class=\"upstream\" id=\"upstream-{}\"><h3>{} <small>{} of {} backends up · balance {} · {} in flight · regions {}</small></h3>",
            escape(u["name"].as_str().unwrap_or("")),
            cell(&u["name"]),
            healthy,
            backends.len(),
            cell(&u["balance"]),
            cell(&u["in_flight"]),
            cell(&u["regions"]),
        );
        let d = &u["discovery"];
        if !d.is_null() {
            let _ = write!(
                o,
                "<p class=\"discovery\">DNS discovery of {}: {} rounds, last answer {}, next refresh {}",
                cell(&d["targets"]),
                cell(&d["rounds"]),
                ago(&d["last_success_unix"], now),
                match d["next_refresh_unix"].as_f64() {
                    Some(t) => format!("in {}", duration(t - now)),
                    None => "–".to_string(),
                },
            );
            if !d["last_error"].is_null() {
                let _ = write!(
                    o,
                    " · <span class=\"state bad\">last error: {}</span>",
                    cell(&d["last_error"])
                );
            }
            o.push_str("</p>");
        }
        let rows: Vec<Vec<String>> = backends
            .iter()
            .map(|b| {
                let h = &b["health"];
                let state = b["state"].as_str().unwrap_or("pending");
                let mut health = badge(state);
                if let Some(r) = h["reason"].as_str() {
                    let _ = write!(health, " <span class=\"reason\">{}</span>", escape(r));
                }
                vec![
                    cell(if b["id"].is_null() {
                        &b["key"]
                    } else {
                        &b["id"]
                    }),
                    cell(&b["address"]),
                    cell(&b["region"]),
                    health,
                    ago(&h["last_check_unix"], now),
                    cell(&h["last_check_ms"]),
                    cell(&b["in_flight"]),
                    cell(&b["requests"]),
                    cell(&b["connect_failures"]),
                    cell(&b["latency_ms"]),
                    cell(&b["weight"]),
                ]
            })
            .collect();
        table(
            &mut o,
            "backends",
            &[
                "backend",
                "address",
                "region",
                "health",
                "last check",
                "check ms",
                "in flight",
                "requests",
                "connect failures",
                "latency ms",
                "weight",
            ],
            &rows,
        );
        o.push_str("</article>");
    }
    o.push_str("</section>");

    o.push_str("<section id=\"routes\"><h2>Routes</h2>");
    let rows: Vec<Vec<String>> = status["routes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let to = if r["upstream"].is_null() {
                format!("static files {}", cell(&r["static_root"]))
            } else {
                format!("upstream {}", cell(&r["upstream"]))
            };
            let hosts = match r["hosts"].as_array() {
                Some(h) if !h.is_empty() => cell(&r["hosts"]),
                _ => "any".to_string(),
            };
            vec![cell(&r["name"]), hosts, cell(&r["path"]), to]
        })
        .collect();
    table(
        &mut o,
        "routes",
        &["name", "hosts", "path", "serves"],
        &rows,
    );
    o.push_str("</section>");

    let acme = status["acme"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if !acme.is_empty() {
        o.push_str("<section id=\"acme\"><h2>Certificates from ACME</h2>");
        let rows: Vec<Vec<String>> = acme
            .iter()
            .map(|h| {
                let serving = h["serving"].as_str().unwrap_or("none");
                let mut s = badge(serving);
                if !h["last_error"].is_null() {
                    let _ = write!(
                        s,
                        " <span class=\"state bad\">last attempt failed</span> <code>{}</code>",
                        cell(&h["last_error"])
                    );
                }
                let expires = match h["not_after_unix"].as_f64() {
                    Some(t) if t > now => format!("in {}", duration(t - now)),
                    Some(_) => "<span class=\"state bad\">expired</span>".to_string(),
                    None => "–".to_string(),
                };
                let next = match h["next_attempt_unix"].as_f64() {
                    Some(t) if t > now => format!("in {}", duration(t - now)),
                    Some(_) => "now".to_string(),
                    None => "–".to_string(),
                };
                vec![
                    cell(&h["host"]),
                    cell(&h["listener"]),
                    s,
                    expires,
                    ago(&h["last_attempt_unix"], now),
                    next,
                    cell(&h["challenge"]),
                    cell(&h["directory"]),
                ]
            })
            .collect();
        table(
            &mut o,
            "acme",
            &[
                "host",
                "listener",
                "serving",
                "expires",
                "last order",
                "next order",
                "challenge",
                "CA directory",
            ],
            &rows,
        );
        o.push_str("</section>");
    }

    o.push_str("<section id=\"reloads\"><h2>Recent reloads</h2>");
    let rows: Vec<Vec<String>> = status["recent_reloads"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let result = r["result"].as_str().unwrap_or("");
            let mut res = badge(result);
            if !r["error"].is_null() {
                let _ = write!(res, " <code>{}</code>", cell(&r["error"]));
            }
            vec![
                ago(&r["at_unix"], now),
                cell(&r["trigger"]),
                res,
                cell(&r["generation"]),
            ]
        })
        .collect();
    table(
        &mut o,
        "reloads",
        &["when", "asked by", "result", "generation after"],
        &rows,
    );
    o.push_str("</section>");
    o.push_str(
        "<footer>Machine-readable: <a href=\"/status\">/status</a> (JSON) · \
         <a href=\"/metrics\">/metrics</a> (Prometheus) · <a href=\"/ready\">/ready</a> · \
         <a href=\"/healthz\">/healthz</a> · reload with <code>POST /reload</code></footer>",
    );
    o.push_str("</body></html>\n");
    o
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em;margin:0}h2{font-size:1.15em;margin-top:1.5em}h3{font-size:1em}\
h3 small{font-weight:normal;color:#555}table{border-collapse:collapse;margin:.5em 0}\
th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}.state{padding:0 .4em;border-radius:3px}.ok{background:#d7f5dd}\
.warn{background:#fff1c2}.bad{background:#ffd6d6}.alert{background:#fff1c2;padding:.5em}\
.reason{color:#555}.none{color:#888}code{font-size:.95em;white-space:pre-wrap}\
footer{margin-top:2em;color:#555}";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_value_is_escaped() {
        let doc = json!({
            "server": {"name": "<b>x</b>"},
            "upstreams": [{"name": "a\"b", "backends": [
                {"id": "<script>alert(1)</script>", "state": "down",
                 "health": {"reason": "'&'"}}
            ]}],
            "recent_reloads": [{"result": "error", "error": "<img src=x>", "trigger": "t"}],
        });
        let page = render(&doc, true);
        assert!(!page.contains("<script>"));
        assert!(!page.contains("<img"));
        assert!(!page.contains("<b>x"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("upstream-a&quot;b"));
        assert!(page.contains("&#39;&amp;&#39;"));
    }

    #[test]
    fn an_empty_document_still_renders() {
        let page = render(&Value::Null, false);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.contains("id=\"redacted\""));
        assert!(page.contains("none"));
    }

    #[test]
    fn times_read_as_a_person_would() {
        assert_eq!(ago(&json!(100.0), 104.2), "4 s ago");
        assert_eq!(ago(&json!(0), 600.0), "10 min ago");
        assert_eq!(ago(&Value::Null, 1.0), "–");
        assert_eq!(duration(7260.0), "2 h 1 min");
    }
}
