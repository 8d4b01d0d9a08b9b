//! The access log's writer: one line per request on stdout, text or JSON, written without
//! going through `tracing`.
//!
//! Formatting twenty fields through `tracing`'s formatter and its writer channel cost about
//! 4 µs per request (measured with `loadtest/compare`, access log on against off): more than
//! the rest of the request path. Here a line is formatted by hand into the worker thread's
//! own buffer (a lock nobody else takes, except the flusher), and buffers go to stdout in
//! batches through the same non-blocking writer thread as before: when one holds 32 KiB,
//! every 100 ms, and at shutdown. A line is therefore visible at most 100 ms after its
//! request ended, as with nginx's `access_log ... buffer=32k flush=100ms`.
//!
//! The line's shape is what the `tracing` formatter printed, so readers need not change: text
//! is `<RFC 3339 time> key=value ...` with string values quoted Rust-style, JSON is one object
//! with `timestamp` and `level` first. `combined` is the NCSA combined format of Apache and
//! nginx (`client - - [time] "request" status bytes "referer" "user agent"`), with nginx's
//! `\xHH` escapes for quotes, backslashes and bytes outside printable ASCII.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portico_config::AccessLogFormat;
use std::io::Write as _;
use tracing_appender::non_blocking::NonBlocking;

/// Bytes a thread buffers before it hands them to the writer.
const BATCH: usize = 32 * 1024;
/// Longest time a line waits in a buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

struct Sink {
    writer: Mutex<NonBlocking>,
    format: AccessLogFormat,
    buffers: Mutex<Vec<Arc<Mutex<Vec<u8>>>>>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

thread_local! {
    static BUFFER: Arc<Mutex<Vec<u8>>> = {
        let b = Arc::new(Mutex::new(Vec::with_capacity(BATCH)));
        if let Some(s) = SINK.get() {
            s.buffers.lock().unwrap_or_else(|e| e.into_inner()).push(b.clone());
        }
        b
    };
}

/// Installs the writer (called once by logging's set-up).
pub fn install(writer: NonBlocking, format: AccessLogFormat) {
    let _ = SINK.set(Sink {
        writer: Mutex::new(writer),
        format,
        buffers: Mutex::new(Vec::new()),
    });
}

/// One value of a line.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    /// Text (quoted).
    Str(&'a str),
    /// An integer.
    Int(u64),
    /// A number with up to three decimals.
    Num(f64),
}

/// A field's name with the text that goes before its value in the text and JSON formats,
/// made at compile time by [`log_key!`]: a line's key is one copy instead of four pieces.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// The name (`status`).
    pub name: &'static str,
    /// ` status=`.
    text: &'static str,
    /// `,"status":`.
    json: &'static str,
}

impl Key {
    /// Use [`log_key!`], which writes the three consistently.
    pub const fn new(name: &'static str, text: &'static str, json: &'static str) -> Key {
        Key { name, text, json }
    }
}

/// The [`Key`] of a field name given as a literal of letters, digits and `_`.
macro_rules! log_key {
    ($name:literal) => {{
        // A constant, so the reference is static: a line's field list is a word per key.
        const KEY: $crate::accesslog::Key = $crate::accesslog::Key::new(
            $name,
            concat!(" ", $name, "="),
            concat!(",\"", $name, "\":"),
        );
        &KEY
    }};
}
pub(crate) use log_key;

/// Appends one line with `fields` (after the time) to this thread's buffer.
pub fn write(fields: &[(&Key, Value<'_>)]) {
    let Some(sink) = SINK.get() else { return };
    BUFFER.with(|b| {
        let mut buf = b.lock().unwrap_or_else(|e| e.into_inner());
        match sink.format {
            AccessLogFormat::Text => text_line(&mut buf, fields),
            AccessLogFormat::Json => json_line(&mut buf, fields),
            AccessLogFormat::Combined => combined_line(&mut buf, fields, now_secs()),
        }
        if buf.len() >= BATCH {
            let mut w = sink.writer.lock().unwrap_or_else(|e| e.into_inner());
            let _ = w.write_all(&buf);
            buf.clear();
        }
    });
}

/// Hands every thread's buffered lines to the writer (the periodic flusher and shutdown).
pub fn flush_all() {
    let Some(sink) = SINK.get() else { return };
    let buffers = sink
        .buffers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for b in buffers {
        let mut buf = b.lock().unwrap_or_else(|e| e.into_inner());
        if !buf.is_empty() {
            let mut w = sink.writer.lock().unwrap_or_else(|e| e.into_inner());
            let _ = w.write_all(&buf);
            buf.clear();
        }
    }
}

/// Flushes every [`FLUSH_EVERY`] until the process ends (run on the control runtime).
pub async fn flusher() {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    loop {
        tick.tick().await;
        flush_all();
    }
}

fn timestamp(out: &mut Vec<u8>) {
    thread_local! {
        // The date and time up to the second, made again only when the second changes.
        static SECOND: std::cell::RefCell<(u64, [u8; 19])> =
            const { std::cell::RefCell::new((u64::MAX, [0; 19])) };
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    SECOND.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            let rem = secs % 86_400;
            let (year, month, day) = civil((secs / 86_400) as i64);
            let mut text = Vec::with_capacity(19);
            let _ = write!(
                text,
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60
            );
            if text.len() == 19 {
                c.1.copy_from_slice(&text);
                c.0 = secs;
            }
        }
        out.extend_from_slice(&c.1);
    });
    out.push(b'.');
    let micros = now.subsec_micros();
    let mut digits = [b'0'; 6];
    let mut m = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (m % 10) as u8;
        m /= 10;
    }
    out.extend_from_slice(&digits);
    out.push(b'Z');
}

/// Year, month and day of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn number(out: &mut Vec<u8>, v: Value<'_>) {
    match v {
        // Most counts in a line are one digit (attempts, replays).
        Value::Int(n) if n < 10 => out.push(b'0' + n as u8),
        Value::Int(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
        Value::Num(x) => {
            // Three decimals at most, trailing zeros left out (as `f64`'s `Display` prints
            // the rounded value), without the float formatting machinery.
            let milli = (x * 1000.0).round();
            if !milli.is_finite() || milli.abs() >= 1e15 {
                let _ = write!(out, "{x}");
                return;
            }
            let milli = milli as i64;
            if milli < 0 {
                out.push(b'-');
            }
            let m = milli.unsigned_abs();
            out.extend_from_slice(itoa::Buffer::new().format(m / 1000).as_bytes());
            let mut frac = m % 1000;
            if frac > 0 {
                out.push(b'.');
                let mut digits = [b'0'; 3];
                for d in digits.iter_mut().rev() {
                    *d = b'0' + (frac % 10) as u8;
                    frac /= 10;
                }
                let keep = 3 - digits.iter().rev().take_while(|&&d| d == b'0').count();
                out.extend_from_slice(&digits[..keep]);
            }
        }
        Value::Str(_) => {}
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A string the way nginx writes it into a log: quotes, backslashes and bytes outside
/// printable ASCII as `\xHH`; empty as `-`.
fn ncsa_str(out: &mut Vec<u8>, s: &str) {
    if s.is_empty() {
        out.push(b'-');
        return;
    }
    for &b in s.as_bytes() {
        if (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' {
            out.push(b);
        } else {
            let _ = write!(out, "\\x{b:02X}");
        }
    }
}

/// `client - - [10/Oct/2000:13:55:36 +0000] "GET /a?b HTTP/1.1" 200 2326 "referer" "agent"`.
fn combined_line(out: &mut Vec<u8>, fields: &[(&Key, Value<'_>)], secs: u64) {
    let get = |key: &str| fields.iter().find(|(k, _)| k.name == key).map(|(_, v)| *v);
    let text = |key: &str| match get(key) {
        Some(Value::Str(s)) if s != "-" => s,
        _ => "",
    };
    ncsa_str(out, text("client"));
    out.extend_from_slice(b" - - [");
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (year, month, day) = civil((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let _ = write!(
        out,
        "{day:02}/{}/{year:04}:{:02}:{:02}:{:02} +0000] \"",
        MONTHS[(month as usize).clamp(1, 12) - 1],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    ncsa_str(out, text("method"));
    out.push(b' ');
    ncsa_str(out, text("path"));
    let query = text("query");
    if !query.is_empty() {
        out.push(b'?');
        ncsa_str(out, query);
    }
    out.push(b' ');
    ncsa_str(out, text("protocol"));
    out.extend_from_slice(b"\" ");
    match get("status") {
        Some(v @ Value::Int(_)) => number(out, v),
        _ => out.push(b'-'),
    }
    out.push(b' ');
    match get("bytes") {
        Some(v @ Value::Int(_)) => number(out, v),
        _ => out.push(b'-'),
    }
    out.extend_from_slice(b" \"");
    ncsa_str(out, text("referer"));
    out.extend_from_slice(b"\" \"");
    ncsa_str(out, text("user_agent"));
    out.extend_from_slice(b"\"\n");
}

/// Bytes a text value holds as they are, between quotes (as `Debug` prints a string:
/// printable ASCII other than `"` and `\\`); one lookup per byte.
static PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        t[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    t
};

fn text_line(out: &mut Vec<u8>, fields: &[(&Key, Value<'_>)]) {
    // The usual line fits: one reservation instead of growth on the way.
    out.reserve(768);
    timestamp(out);
    for (k, v) in fields {
        out.extend_from_slice(k.text.as_bytes());
        match v {
            Value::Str(s) => {
                // As `Debug` prints a string: quoted, with escapes. Plain ASCII needs none.
                if s.bytes().all(|b| PLAIN[b as usize]) {
                    out.push(b'"');
                    out.extend_from_slice(s.as_bytes());
                    out.push(b'"');
                } else {
                    let _ = write!(out, "{s:?}");
                }
            }
            n => number(out, *n),
        }
    }
    out.push(b'\n');
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

fn json_line(out: &mut Vec<u8>, fields: &[(&Key, Value<'_>)]) {
    out.reserve(1024);
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out);
    out.extend_from_slice(b"\",\"level\":\"INFO\"");
    for (k, v) in fields {
        out.extend_from_slice(k.json.as_bytes());
        match v {
            Value::Str(s) => json_str(out, s),
            n => number(out, *n),
        }
    }
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_lines_are_ncsa_with_nginx_escapes() {
        let fields = [
            (log_key!("client"), Value::Str("203.0.113.9")),
            (log_key!("method"), Value::Str("GET")),
            (log_key!("path"), Value::Str("/a\"b")),
            (log_key!("query"), Value::Str("x=1")),
            (log_key!("protocol"), Value::Str("HTTP/1.1")),
            (log_key!("status"), Value::Int(200)),
            (log_key!("bytes"), Value::Int(2326)),
            (log_key!("referer"), Value::Str("")),
            (log_key!("user_agent"), Value::Str("curl/8 \u{e9}")),
        ];
        let mut out = Vec::new();
        // 2000-10-10T13:55:36Z
        combined_line(&mut out, &fields, 971_186_136);
        assert_eq!(
            String::from_utf8(out).unwrap_or_default(),
            "203.0.113.9 - - [10/Oct/2000:13:55:36 +0000] \"GET /a\\x22b?x=1 HTTP/1.1\" 200 2326 \"-\" \"curl/8 \\xC3\\xA9\"\n"
        );
    }

    #[test]
    fn lines_look_like_the_tracing_formatter_made_them() {
        let fields = [
            (log_key!("request_id"), Value::Str("abc")),
            (log_key!("referer"), Value::Str("https://x/\"q\"\n")),
            (log_key!("status"), Value::Int(404)),
            (log_key!("attempts"), Value::Int(1)),
            (log_key!("bytes"), Value::Int(10)),
            (log_key!("duration_ms"), Value::Num(5.17749)),
            (log_key!("upstream_ms"), Value::Num(-1.0)),
            (log_key!("short"), Value::Num(0.3401)),
            (log_key!("whole"), Value::Num(12.0)),
        ];
        let mut t = Vec::new();
        text_line(&mut t, &fields);
        let t = String::from_utf8(t).unwrap();
        assert!(
            t.ends_with(" request_id=\"abc\" referer=\"https://x/\\\"q\\\"\\n\" status=404 attempts=1 bytes=10 duration_ms=5.177 upstream_ms=-1 short=0.34 whole=12\n"),
            "{t}"
        );
        let mut j = Vec::new();
        json_line(&mut j, &fields);
        let v: serde_json::Value = serde_json::from_slice(&j).unwrap();
        assert_eq!(v["referer"], "https://x/\"q\"\n");
        assert_eq!(v["status"], 404);
        assert_eq!(v["attempts"], 1);
        assert_eq!(v["bytes"], 10);
        assert_eq!(v["duration_ms"], 5.177);
        assert_eq!(v["level"], "INFO");
        let ts = v["timestamp"].as_str().unwrap();
        assert_eq!(ts.len(), 27, "{ts}");
        assert!(ts.starts_with("20") && ts.ends_with('Z'));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(1_709_208_000 / 86_400), (2024, 2, 29));
        assert_eq!(civil(11_016), (2000, 2, 29));
        assert_eq!(civil(20_788), (2026, 12, 1));
    }
}
