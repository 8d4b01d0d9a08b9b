//! `Content-Type` by file extension, and which types are worth compressing.
//!
//! The table is mime_guess's (about 1,000 extensions, kept up to date upstream), with
//! Portico's overrides first for the web types where it answers differently from what
//! browsers and the current RFCs expect, or not at all: JavaScript is `text/javascript`
//! (RFC 9239; mime_guess says `application/javascript`, and has no `.mjs`/`.cjs`), source maps
//! are JSON, `.webmanifest` is the W3C manifest type, `.avif` and `.wasm` are spelled out so
//! they do not depend on mime_guess's version. Text types get `charset=utf-8`: build tools
//! write UTF-8, and without it browsers guess from the locale.

use std::borrow::Cow;

/// Types whose answer is Portico's, not mime_guess's (see the module docs).
const OVERRIDES: &[(&str, &str)] = &[
    ("html", "text/html; charset=utf-8"),
    ("htm", "text/html; charset=utf-8"),
    ("css", "text/css; charset=utf-8"),
    ("js", "text/javascript; charset=utf-8"),
    ("mjs", "text/javascript; charset=utf-8"),
    ("cjs", "text/javascript; charset=utf-8"),
    ("json", "application/json; charset=utf-8"),
    ("map", "application/json; charset=utf-8"),
    ("webmanifest", "application/manifest+json; charset=utf-8"),
    ("xml", "application/xml; charset=utf-8"),
    ("svg", "image/svg+xml; charset=utf-8"),
    ("avif", "image/avif"),
    ("wasm", "application/wasm"),
    ("ico", "image/x-icon"),
];

/// The media type of a file name (`application/octet-stream` when unknown), with
/// `charset=utf-8` for text.
pub fn content_type(name: &str) -> Cow<'static, str> {
    let Some((_, ext)) = name.rsplit_once('.') else {
        return Cow::Borrowed("application/octet-stream");
    };
    if let Some((_, t)) = OVERRIDES.iter().find(|(e, _)| e.eq_ignore_ascii_case(ext)) {
        return Cow::Borrowed(t);
    }
    match mime_guess::from_ext(ext).first_raw() {
        Some(t) if t.starts_with("text/") => Cow::Owned(format!("{t}; charset=utf-8")),
        Some(t) => Cow::Borrowed(t),
        None => Cow::Borrowed("application/octet-stream"),
    }
}

/// Whether on-the-fly compression helps this type.
pub fn compressible(content_type: &str) -> bool {
    content_type.starts_with("text/")
        || content_type.starts_with("application/json")
        || content_type.starts_with("application/manifest+json")
        || content_type.starts_with("application/xml")
        || content_type.starts_with("application/wasm")
        || content_type.starts_with("image/svg+xml")
        || content_type.starts_with("image/x-icon")
        || content_type.starts_with("font/ttf")
        || content_type.starts_with("font/otf")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types() {
        for (name, want) in [
            ("a.HTML", "text/html; charset=utf-8"),
            ("app.3f9a1c.js", "text/javascript; charset=utf-8"),
            ("m.mjs", "text/javascript; charset=utf-8"),
            ("app.js.map", "application/json; charset=utf-8"),
            (
                "site.webmanifest",
                "application/manifest+json; charset=utf-8",
            ),
            ("logo.svg", "image/svg+xml; charset=utf-8"),
            ("a.woff2", "font/woff2"),
            ("a.png", "image/png"),
            ("photo.JPG", "image/jpeg"),
            ("pic.avif", "image/avif"),
            ("mod.wasm", "application/wasm"),
            ("doc.pdf", "application/pdf"),
            ("clip.mp4", "video/mp4"),
            ("subs.vtt", "text/vtt; charset=utf-8"),
            ("data.csv", "text/csv; charset=utf-8"),
            ("notes.txt", "text/plain; charset=utf-8"),
            ("README.md", "text/markdown; charset=utf-8"),
            // From mime_guess's table, not Portico's overrides.
            ("a.epub", "application/epub+zip"),
            ("a.ics", "text/calendar; charset=utf-8"),
            ("noext", "application/octet-stream"),
            ("a.unknownext", "application/octet-stream"),
            ("trailingdot.", "application/octet-stream"),
        ] {
            assert_eq!(content_type(name), want, "{name}");
        }
    }
}
