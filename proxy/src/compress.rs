//! Compression of proxied responses (a route's `compress`, fly.toml's
//! `http_options.compress`): the decision and the streaming encoder.
//!
//! The decision is Portico's: the client's `Accept-Encoding` with its q-values (pingora's
//! `ResponseCompressionCtx` takes the first coding listed and ignores q, and has a fixed
//! 20-byte minimum and no `no-transform` or range checks), the route's types and minimum
//! size, and never a response that is already encoded, partial (206, or to a `Range`
//! request), marked `Cache-Control: no-transform`, bodiless, an upgrade, or a stream whose
//! events must not wait in a compressor (`text/event-stream`, gRPC). The encoders are
//! pingora-core's (gzip by flate2, brotli, zstd), streamed chunk by chunk: nothing buffers
//! a whole body.
//!
//! Header changes follow RFC 9110: `Content-Encoding` set, `Content-Length` and
//! `Accept-Ranges` removed (the length is not known ahead; ranges of the encoded form are not
//! offered), `Vary: Accept-Encoding` added (also on uncompressed answers a compressed one
//! could have replaced, for caches), and a strong `ETag` weakened (`W/"..."`), as nginx does.

use bytes::Bytes;
use http::HeaderValue;
use pingora_core::protocols::http::compression::{Algorithm, Encode};
use portico_config::Compress;

/// An algorithm Portico compresses with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `zstd` (RFC 8878).
    Zstd,
    /// `br` (RFC 7932).
    Brotli,
    /// `gzip`.
    Gzip,
}

impl Coding {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Brotli => "br",
            Coding::Gzip => "gzip",
        }
    }

    /// Ties between equal q-values go to the earlier one: zstd and brotli compress text
    /// better than gzip at the same CPU.
    const PREFERENCE: [Coding; 3] = [Coding::Zstd, Coding::Brotli, Coding::Gzip];
}

/// The coding to use for a client's `Accept-Encoding`, among `enabled`: the highest q-value,
/// ties by `Coding::PREFERENCE`; `*` covers codings not named; q=0 excludes.
pub fn choose(accept_encoding: Option<&[u8]>, enabled: &[Coding]) -> Option<Coding> {
    let ae = accept_encoding?;
    let text = std::str::from_utf8(ae).ok()?;
    let mut named: [Option<f32>; 3] = [None; 3];
    let mut star: Option<f32> = None;
    for item in text.split(',') {
        let mut parts = item.split(';');
        let token = parts.next().unwrap_or("").trim();
        let mut q = 1.0f32;
        for p in parts {
            let p = p.trim();
            if let Some(v) = p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")) {
                // A malformed q-value makes the coding unacceptable rather than preferred.
                q = v
                    .trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|q| (0.0..=1.0).contains(q))
                    .unwrap_or(0.0);
            }
        }
        let slot = match token.to_ascii_lowercase().as_str() {
            "zstd" => Some(0),
            "br" => Some(1),
            "gzip" | "x-gzip" => Some(2),
            "*" => {
                star = Some(q);
                None
            }
            _ => None,
        };
        if let Some(i) = slot {
            named[i] = Some(named[i].map_or(q, |old: f32| old.max(q)));
        }
    }
    let mut best: Option<(Coding, f32)> = None;
    for (i, c) in Coding::PREFERENCE.iter().enumerate() {
        if !enabled.contains(c) {
            continue;
        }
        let q = named[i].or(star).unwrap_or(0.0);
        if q > 0.0 && best.is_none_or(|(_, bq)| q > bq) {
            best = Some((*c, q));
        }
    }
    best.map(|(c, _)| c)
}

/// Whether a media type is in the route's compressible types: exact (`application/json`),
/// any subtype (`text/*`) or a structured suffix (`application/*+json`); parameters ignored.
pub fn compressible_type(content_type: &[u8], cfg: &Compress) -> bool {
    let Ok(ct) = std::str::from_utf8(content_type) else {
        return false;
    };
    let mt = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mt.is_empty() || mt == "text/event-stream" || mt.starts_with("application/grpc") {
        return false;
    }
    let Some((ty, sub)) = mt.split_once('/') else {
        return false;
    };
    cfg.types.iter().any(|pattern| {
        let Some((pty, psub)) = pattern.split_once('/') else {
            return false;
        };
        pty == ty
            && match psub.strip_prefix('*') {
                // `text/*`, and suffixes such as `application/*+json`.
                Some(suffix) => sub.ends_with(suffix),
                None => psub == sub,
            }
    })
}

/// What the response says, for [`decide`].
#[derive(Debug, Default, Clone, Copy)]
pub struct ResponseFacts<'a> {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: Option<&'a [u8]>,
    /// `Content-Encoding`.
    pub content_encoding: Option<&'a [u8]>,
    /// `Content-Length`, when known.
    pub content_length: Option<u64>,
    /// `Cache-Control`.
    pub cache_control: Option<&'a [u8]>,
    /// Whether the response has no body by its status or the request's method.
    pub bodiless: bool,
}

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Leave it alone; `vary` says whether to add `Vary: Accept-Encoding` (the answer could
    /// have been compressed for another client).
    Pass {
        /// Add `Vary: Accept-Encoding`.
        vary: bool,
    },
    /// Compress with this coding.
    Compress(Coding),
}

/// Decides for one response; `range` says the request asked for a range.
pub fn decide(
    cfg: &Compress,
    accept_encoding: Option<&[u8]>,
    range: bool,
    r: &ResponseFacts<'_>,
) -> Decision {
    let eligible = matches!(r.status, 200..=299)
        && r.status != 204
        && r.status != 206
        && !r.bodiless
        && r.content_encoding
            .is_none_or(|e| e.trim_ascii().is_empty() || e.eq_ignore_ascii_case(b"identity"))
        && !r.cache_control.is_some_and(|cc| {
            cc.split(|&b| b == b',')
                .any(|d| d.trim_ascii().eq_ignore_ascii_case(b"no-transform"))
        })
        && r.content_type.is_some_and(|ct| compressible_type(ct, cfg))
        && r.content_length.is_none_or(|n| n >= cfg.min_size);
    if !eligible {
        return Decision::Pass { vary: false };
    }
    if range {
        return Decision::Pass { vary: true };
    }
    match choose(accept_encoding, &codings(cfg)) {
        Some(c) => Decision::Compress(c),
        None => Decision::Pass { vary: true },
    }
}

/// The codings a route enables (level above 0).
fn codings(cfg: &Compress) -> Vec<Coding> {
    [
        (Coding::Zstd, cfg.zstd_level),
        (Coding::Brotli, cfg.brotli_level),
        (Coding::Gzip, cfg.gzip_level),
    ]
    .into_iter()
    .filter(|(_, level)| *level > 0)
    .map(|(c, _)| c)
    .collect()
}

/// `W/"x"` for a strong `"x"`; a weak one stays; anything else is dropped (`None`).
pub fn weaken_etag(etag: &[u8]) -> Option<HeaderValue> {
    if etag.starts_with(b"W/") {
        return HeaderValue::from_bytes(etag).ok();
    }
    if etag.first() == Some(&b'"') {
        let mut v = Vec::with_capacity(etag.len() + 2);
        v.extend_from_slice(b"W/");
        v.extend_from_slice(etag);
        return HeaderValue::from_bytes(&v).ok();
    }
    None
}

/// What compressing (or not) one response changes.
#[derive(Debug, Default)]
pub struct Plan {
    /// The encoder, when compressing.
    pub encoder: Option<Encoder>,
    /// Fields to remove from the backend's response.
    pub drop: &'static [http::HeaderName],
    /// Fields to add.
    pub add: Vec<(http::HeaderName, HeaderValue)>,
}

/// Removed from a response that is compressed.
static DROPPED: [http::HeaderName; 3] = [
    http::header::CONTENT_LENGTH,
    http::header::ACCEPT_RANGES,
    http::header::ETAG,
];

/// Decides for one response and says what changes: the request's `Accept-Encoding` and
/// `Range`, the response's facts and `ETag`.
pub fn plan(
    cfg: &Compress,
    accept_encoding: Option<&[u8]>,
    range: bool,
    facts: &ResponseFacts<'_>,
    etag: Option<&[u8]>,
) -> Plan {
    let vary = (
        http::header::VARY,
        HeaderValue::from_static("accept-encoding"),
    );
    match decide(cfg, accept_encoding, range, facts) {
        Decision::Pass { vary: false } => Plan::default(),
        Decision::Pass { vary: true } => Plan {
            add: vec![vary],
            ..Plan::default()
        },
        Decision::Compress(c) => {
            let Some(encoder) = Encoder::new(c, cfg) else {
                return Plan::default();
            };
            let mut add = vec![
                (
                    http::header::CONTENT_ENCODING,
                    HeaderValue::from_static(c.token()),
                ),
                vary,
            ];
            if let Some(weak) = etag.and_then(weaken_etag) {
                add.push((http::header::ETAG, weak));
            }
            Plan {
                encoder: Some(encoder),
                drop: &DROPPED,
                add,
            }
        }
    }
}

/// A streaming encoder.
pub enum Encoder {
    /// pingora-core's gzip or zstd encoder.
    Pingora(Box<dyn Encode + Send + Sync>),
    /// brotli's own writer: pingora's brotli encoder ends a body with a flush instead of
    /// finishing the stream, so strict decoders (Node's fetch, the brotli tool) reject it
    /// (cloudflare/pingora#1013, open in 0.9.1).
    Brotli(Option<Box<brotli::CompressorWriter<Vec<u8>>>>),
}

impl Encoder {
    /// An encoder for `coding` at the route's level.
    pub fn new(coding: Coding, cfg: &Compress) -> Option<Self> {
        let (alg, level) = match coding {
            Coding::Zstd => (Algorithm::Zstd, cfg.zstd_level),
            Coding::Brotli => {
                // 4 KiB of buffer and a 4 MiB window (lgwin 22), as the brotli tool.
                return (cfg.brotli_level > 0).then(|| {
                    Encoder::Brotli(Some(Box::new(brotli::CompressorWriter::new(
                        Vec::new(),
                        4096,
                        cfg.brotli_level,
                        22,
                    ))))
                });
            }
            Coding::Gzip => (Algorithm::Gzip, cfg.gzip_level),
        };
        alg.compressor(level).map(Encoder::Pingora)
    }

    /// Encodes `input`; `end` finishes the stream.
    pub fn encode(&mut self, input: &[u8], end: bool) -> Result<Bytes, String> {
        match self {
            Encoder::Pingora(e) => e.encode(input, end).map_err(|e| e.to_string()),
            Encoder::Brotli(slot) => {
                let Some(w) = slot.as_mut() else {
                    return Err("brotli stream already finished".into());
                };
                std::io::Write::write_all(w, input).map_err(|e| e.to_string())?;
                if end {
                    let mut w = *slot.take().ok_or("brotli stream already finished")?;
                    // into_inner runs BROTLI_OPERATION_FINISH: the ISLAST meta-block.
                    let mut out = std::mem::take(w.get_mut());
                    out.extend_from_slice(&w.into_inner());
                    return Ok(out.into());
                }
                Ok(std::mem::take(w.get_mut()).into())
            }
        }
    }
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Encoder")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Compress {
        Compress::default()
    }

    #[test]
    fn q_values_decide_and_ties_prefer_zstd_then_brotli() {
        let all = [Coding::Zstd, Coding::Brotli, Coding::Gzip];
        assert_eq!(
            choose(Some(b"gzip, deflate, br, zstd"), &all),
            Some(Coding::Zstd)
        );
        assert_eq!(choose(Some(b"gzip, br"), &all), Some(Coding::Brotli));
        assert_eq!(
            choose(Some(b"gzip;q=1.0, br;q=0.5"), &all),
            Some(Coding::Gzip)
        );
        assert_eq!(
            choose(Some(b"br;q=0, gzip;q=0.1"), &all),
            Some(Coding::Gzip)
        );
        assert_eq!(choose(Some(b"*;q=0.5, gzip;q=0"), &all), Some(Coding::Zstd));
        assert_eq!(choose(Some(b"identity"), &all), None);
        assert_eq!(choose(Some(b"gzip;q=abc"), &all), None);
        assert_eq!(choose(None, &all), None);
        assert_eq!(choose(Some(b"br, zstd"), &[Coding::Gzip]), None);
        assert_eq!(choose(Some(b"GZIP"), &all), Some(Coding::Gzip));
    }

    #[test]
    fn only_eligible_responses_are_compressed() {
        let c = cfg();
        let ok = ResponseFacts {
            status: 200,
            content_type: Some(b"text/html; charset=utf-8"),
            content_length: Some(24_000),
            ..Default::default()
        };
        let ae = Some(&b"gzip"[..]);
        assert_eq!(decide(&c, ae, false, &ok), Decision::Compress(Coding::Gzip));
        assert_eq!(decide(&c, None, false, &ok), Decision::Pass { vary: true });
        assert_eq!(decide(&c, ae, true, &ok), Decision::Pass { vary: true });
        for r in [
            ResponseFacts { status: 206, ..ok },
            ResponseFacts { status: 304, ..ok },
            ResponseFacts {
                content_encoding: Some(b"br"),
                ..ok
            },
            ResponseFacts {
                cache_control: Some(b"public, No-Transform"),
                ..ok
            },
            ResponseFacts {
                content_type: Some(b"image/png"),
                ..ok
            },
            ResponseFacts {
                content_type: Some(b"text/event-stream"),
                ..ok
            },
            ResponseFacts {
                content_type: Some(b"application/grpc+proto"),
                ..ok
            },
            ResponseFacts {
                content_type: None,
                ..ok
            },
            ResponseFacts {
                content_length: Some(100),
                ..ok
            },
            ResponseFacts {
                bodiless: true,
                ..ok
            },
        ] {
            assert_eq!(
                decide(&c, ae, false, &r),
                Decision::Pass { vary: false },
                "{r:?}"
            );
        }
        let json = ResponseFacts {
            content_type: Some(b"application/vnd.api+json"),
            ..ok
        };
        assert_eq!(
            decide(&c, ae, false, &json),
            Decision::Compress(Coding::Gzip)
        );
        let unknown_len = ResponseFacts {
            content_length: None,
            ..ok
        };
        assert_eq!(
            decide(&c, ae, false, &unknown_len),
            Decision::Compress(Coding::Gzip)
        );
    }

    #[test]
    fn etags_are_weakened() {
        assert_eq!(weaken_etag(b"\"abc\"").unwrap(), "W/\"abc\"");
        assert_eq!(weaken_etag(b"W/\"abc\"").unwrap(), "W/\"abc\"");
        assert!(weaken_etag(b"abc").is_none());
    }

    #[test]
    fn encoders_round_trip() {
        let c = cfg();
        let text = "portico ".repeat(5000);
        for coding in [Coding::Gzip, Coding::Brotli, Coding::Zstd] {
            let mut e = Encoder::new(coding, &c).unwrap();
            let mut out = Vec::new();
            for chunk in text.as_bytes().chunks(3000) {
                out.extend_from_slice(&e.encode(chunk, false).unwrap());
            }
            out.extend_from_slice(&e.encode(&[], true).unwrap());
            assert!(out.len() < text.len() / 10, "{coding:?}: {}", out.len());
            let back = match coding {
                Coding::Gzip => {
                    let mut d = flate2::read::GzDecoder::new(&out[..]);
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut d, &mut s).unwrap();
                    s
                }
                Coding::Brotli => {
                    let mut s = Vec::new();
                    brotli::BrotliDecompress(&mut &out[..], &mut s).unwrap();
                    String::from_utf8(s).unwrap()
                }
                Coding::Zstd => String::from_utf8(zstd::decode_all(&out[..]).unwrap()).unwrap(),
            };
            assert_eq!(back, text, "{coding:?}");
        }
    }
}
