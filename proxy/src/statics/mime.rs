//! `Content-Type` by file extension, and which types are worth compressing.

/// The media type of a file name (`application/octet-stream` when unknown), with
/// `charset=utf-8` for text.
pub fn content_type(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
    match ext.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" | "cjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json; charset=utf-8",
        "webmanifest" => "application/manifest+json; charset=utf-8",
        "xml" => "application/xml; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        "md" => "text/markdown; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "svg" => "image/svg+xml; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "bmp" => "image/bmp",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "eot" => "application/vnd.ms-fontobject",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "wav" => "audio/wav",
        "vtt" => "text/vtt; charset=utf-8",
        _ => "application/octet-stream",
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

/// Whether a file name looks content-hashed: `name-<hash>.ext` or `name.<hash>.ext`, the
/// hash 8 to 64 characters of `[A-Za-z0-9_]` that are not a plain word (a digit, or an
/// upper-case letter after the first character).
pub fn is_hashed(name: &str) -> bool {
    let Some((stem, _ext)) = name.rsplit_once('.') else {
        return false;
    };
    stem.split(['-', '.']).skip(1).any(|token| {
        (8..=64).contains(&token.len())
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && (token.bytes().any(|b| b.is_ascii_digit())
                || token.bytes().skip(1).any(|b| b.is_ascii_uppercase()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_names() {
        for yes in [
            "index-BXp3d9fK.js",
            "index-DiwrgTda.css",
            "main.3f2a1b9c.js",
            "vendor.4e5f6a7b8c9d0e1f.chunk.js",
            "logo-a1b2c3d4.svg",
        ] {
            assert!(is_hashed(yes), "{yes}");
        }
        for no in [
            "index.html",
            "app.js",
            "user-dashboard.js",
            "User-Dashboard.js",
            "favicon.ico",
            "a-b.js",
        ] {
            assert!(!is_hashed(no), "{no}");
        }
    }

    #[test]
    fn types() {
        assert_eq!(content_type("a.HTML"), "text/html; charset=utf-8");
        assert_eq!(content_type("a.woff2"), "font/woff2");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }
}
