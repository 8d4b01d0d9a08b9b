//! Client affinity: the sealed cookie of `sticky = { mode = "cookie" }`, and the query-string
//! key of hash modes.
//!
//! The cookie value is opaque: the backend's stable key (instance id, else address) sealed
//! with AES-256-GCM under a key derived from the route's secret, with the upstream name as
//! associated data, in URL-safe base64 (`nonce || ciphertext || tag`). Clients learn nothing
//! about internal addresses and cannot forge a pin or move one to another upstream; the same
//! secret opens pins made before a restart or by another Portico. A value that does not open
//! is ignored like no cookie at all. ring's AEAD is used rather than a keyed hash because it
//! needs no table from hashes back to backends: opening the value names the backend.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Longest backend key a pin may carry (instance ids and addresses are far shorter).
const MAX_KEY: usize = 512;

/// Seals and opens affinity cookies.
pub struct CookieSigner {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl CookieSigner {
    /// A sealer whose key is derived from a secret from the config or environment.
    pub fn new(secret: &[u8]) -> Self {
        // The AEAD key is an HMAC of a fixed label under the secret (a one-step KDF): any
        // secret length works and the raw secret is never used as a cipher key.
        let derived = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, secret),
            b"portico affinity cookie v2",
        );
        let mut key = [0u8; 32];
        key.copy_from_slice(&derived.as_ref()[..32]);
        Self::from_key_bytes(&key)
    }

    fn from_key_bytes(bytes: &[u8; 32]) -> Self {
        // AES-256 takes any 32-byte key: this cannot fail.
        #[allow(clippy::expect_used)]
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte key is an AES-256 key"),
        );
        Self {
            key,
            rng: SystemRandom::new(),
        }
    }

    /// A sealer with a random key: cookies stop opening when the process restarts.
    pub fn random() -> Self {
        let rng = SystemRandom::new();
        let mut bytes = [0u8; 32];
        if rng.fill(&mut bytes).is_err() {
            // The system RNG failing is not a reason to stop; fall back to a weaker secret.
            for chunk in bytes.chunks_mut(8) {
                chunk.copy_from_slice(&fastrand::u64(..).to_le_bytes());
            }
        }
        Self::from_key_bytes(&bytes)
    }

    /// The cookie value pinning a client to `backend` of `upstream`.
    pub fn value(&self, upstream: &str, backend: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        if self.rng.fill(&mut nonce).is_err() {
            nonce[..8].copy_from_slice(&fastrand::u64(..).to_le_bytes());
            nonce[8..].copy_from_slice(&fastrand::u32(..).to_le_bytes());
        }
        let mut buf = backend.as_bytes().to_vec();
        let sealed = self.key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(upstream.as_bytes()),
            &mut buf,
        );
        if sealed.is_err() {
            return String::new();
        }
        let mut raw = Vec::with_capacity(NONCE_LEN + buf.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&buf);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The backend key a cookie value names, when it opens under this key for `upstream`.
    pub fn verify(&self, upstream: &str, value: &str) -> Option<String> {
        if value.len() > (MAX_KEY + NONCE_LEN + 16) * 4 / 3 + 4 {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(value).ok()?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(upstream.as_bytes()), &mut buf)
            .ok()?;
        String::from_utf8(plain.to_vec()).ok()
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
    fn cookies_open_only_untampered() {
        let s = CookieSigner::new(b"0123456789abcdef0123");
        let v = s.value("web", "10.0.0.7:8080");
        // Opaque: the address is not in the value, in any encoding.
        assert!(!v.contains("10.0.0.7"), "{v}");
        assert!(!v.contains(&URL_SAFE_NO_PAD.encode("10.0.0.7")), "{v}");
        assert!(!v.contains("31302e302e302e37"), "{v}");
        assert_eq!(s.verify("web", &v).as_deref(), Some("10.0.0.7:8080"));
        // The same secret opens it after a restart (a new sealer).
        let again = CookieSigner::new(b"0123456789abcdef0123");
        assert_eq!(again.verify("web", &v).as_deref(), Some("10.0.0.7:8080"));
        // Another upstream, another key, or a changed byte: rejected.
        assert_eq!(s.verify("api", &v), None);
        assert_eq!(
            CookieSigner::new(b"another secret 12345").verify("web", &v),
            None
        );
        let mut bytes = URL_SAFE_NO_PAD.decode(&v).unwrap();
        for i in 0..bytes.len() {
            bytes[i] ^= 1;
            assert_eq!(
                s.verify("web", &URL_SAFE_NO_PAD.encode(&bytes)),
                None,
                "byte {i}"
            );
            bytes[i] ^= 1;
        }
        for junk in [
            "",
            ".",
            "zz.zz",
            "69.00",
            &v[..v.len() - 1],
            "\u{e9}",
            &"A".repeat(5000),
        ] {
            assert_eq!(s.verify("web", junk), None, "{junk:?}");
        }
        assert_eq!(CookieSigner::random().verify("web", &v), None);
    }

    #[test]
    fn query_params() {
        assert_eq!(query_param(Some("a=1&sid=x&b"), "sid"), Some("x"));
        assert_eq!(query_param(Some("b&sid"), "sid"), Some(""));
        assert_eq!(query_param(Some("sidx=1"), "sid"), None);
        assert_eq!(query_param(None, "sid"), None);
    }
}
