//! Client affinity: the signed cookie of `sticky = { mode = "cookie" }`, and the query-string
//! key of hash modes.
//!
//! The cookie value is `<hex(backend key)>.<hex(tag)>`, the tag being the first 16 bytes of
//! HMAC-SHA256 over the upstream name and backend key. Clients can read which backend they
//! are pinned to but cannot forge a pin to another one; a value that does not verify is
//! ignored like no cookie at all.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use ring::hmac;

/// Bytes of the HMAC kept in the cookie (128 bits).
const TAG_LEN: usize = 16;

/// Signs and verifies affinity cookies.
pub struct CookieSigner {
    key: hmac::Key,
}

impl CookieSigner {
    /// A signer with a secret from the config or environment.
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// A signer with a random secret: cookies stop verifying when the process restarts.
    pub fn random() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).unwrap_or_else(|_| {
            // The system RNG failing is not a reason to stop; fall back to a weaker secret.
            let seed = format!("{:x}{:x}", fastrand::u64(..), fastrand::u64(..));
            hmac::Key::new(hmac::HMAC_SHA256, seed.as_bytes())
        });
        Self { key }
    }

    fn tag(&self, upstream: &str, backend: &str) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(upstream.as_bytes());
        ctx.update(b"\0");
        ctx.update(backend.as_bytes());
        ctx.sign()
    }

    /// The cookie value pinning a client to `backend` of `upstream`.
    pub fn value(&self, upstream: &str, backend: &str) -> String {
        let tag = self.tag(upstream, backend);
        let mut out = String::with_capacity(backend.len() * 2 + 1 + TAG_LEN * 2);
        hex(&mut out, backend.as_bytes());
        out.push('.');
        hex(&mut out, &tag.as_ref()[..TAG_LEN]);
        out
    }

    /// The backend key named by a cookie value, when its tag verifies.
    pub fn verify(&self, upstream: &str, value: &str) -> Option<String> {
        let (key_hex, tag_hex) = value.split_once('.')?;
        if key_hex.len() > 1024 || tag_hex.len() != TAG_LEN * 2 {
            return None;
        }
        let key = String::from_utf8(unhex(key_hex)?).ok()?;
        let tag = unhex(tag_hex)?;
        let want = self.tag(upstream, &key);
        // Constant-time comparison, so the tag cannot be guessed byte by byte.
        let mut diff = 0u8;
        for (a, b) in want.as_ref()[..TAG_LEN].iter().zip(&tag) {
            diff |= a ^ b;
        }
        (diff == 0).then_some(key)
    }
}

/// The signer of a cookie route: its `key`, else `$PORTICO_STICKY_KEY`, else a secret made
/// once per process (kept across reloads, lost on restart).
pub fn signer(c: &portico_config::StickyCookie) -> Arc<CookieSigner> {
    static PROCESS: OnceLock<Arc<CookieSigner>> = OnceLock::new();
    if let Some(k) = &c.key {
        return Arc::new(CookieSigner::new(k.as_bytes()));
    }
    match std::env::var("PORTICO_STICKY_KEY") {
        Ok(k) if !k.is_empty() => Arc::new(CookieSigner::new(k.as_bytes())),
        _ => PROCESS
            .get_or_init(|| {
                tracing::warn!("sticky cookies are signed with a key made at start: they will not survive a restart or work across several Portico instances; set `key` in the route's sticky table or PORTICO_STICKY_KEY");
                Arc::new(CookieSigner::random())
            })
            .clone(),
    }
}

fn hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The value of query parameter `name` (raw, not percent-decoded: it is only hashed).
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `Set-Cookie` value for a pin.
pub fn set_cookie(c: &portico_config::StickyCookie, value: &str, tls: bool) -> String {
    let mut s = format!("{}={value}; Path={}", c.name, c.path);
    if let Some(age) = c.max_age {
        let _ = write!(s, "; Max-Age={}", age.as_secs());
    }
    if c.secure.unwrap_or(tls) {
        s.push_str("; Secure");
    }
    if c.http_only {
        s.push_str("; HttpOnly");
    }
    if let Some(ss) = &c.same_site {
        let _ = write!(s, "; SameSite={ss}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_verify_only_untampered() {
        let s = CookieSigner::new(b"0123456789abcdef0123");
        let v = s.value("web", "i-1");
        assert_eq!(s.verify("web", &v).as_deref(), Some("i-1"));
        // Another upstream, another key, or a changed backend: rejected.
        assert_eq!(s.verify("api", &v), None);
        assert_eq!(
            CookieSigner::new(b"another secret 12345").verify("web", &v),
            None
        );
        let forged = format!("{}{}", "692d32", &v[v.find('.').unwrap()..]);
        assert_eq!(s.verify("web", &forged), None);
        for junk in [
            "",
            ".",
            "zz.zz",
            "69.00",
            &v[..v.len() - 1],
            "\u{e9}.\u{e9}",
        ] {
            assert_eq!(s.verify("web", junk), None, "{junk:?}");
        }
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param(Some("a=1&sid=x&b"), "sid"), Some("x"));
        assert_eq!(query_param(Some("b&sid"), "sid"), Some(""));
        assert_eq!(query_param(Some("sidx=1"), "sid"), None);
        assert_eq!(query_param(None, "sid"), None);
    }
}
