//! Whether a file name carries a content hash, so it can be cached for a year.
//!
//! The rule follows what bundlers emit by default:
//! - **hex** hashes, 8 to 64 characters of `[0-9a-f]` after a `.` or `-` (or as the whole
//!   name): webpack `[name].[contenthash].js` (20 by default, often `:8`), Create React App
//!   `main.3f2a1b9c.chunk.js`, Parcel `index.975ef6c8.js`, Next.js `framework-2c79e2a64abdb08b.js`
//!   and `8a3f1e2b9c4d5e6f.css`, Angular `main.<16 or 20 hex>.js`, Gatsby `app-<20 hex>.js`,
//!   Vite 2 and Rollup 2;
//! - **base64url** hashes, the last 8 characters of the name after a `-` or `.`, from
//!   `[A-Za-z0-9_-]`: Rollup 3+ and Vite 3+ (`index-C7-9Ngwl.js`), SvelteKit and Nuxt
//!   (`start.BjA6LoBN.js`), and esbuild's base32 (`chunk-5VTAHLQN.js`, Angular 17+, Remix).
//!
//! A hash token must contain a digit and a letter (hex), or look random (base64url): ordinary
//! words (`Inter-SemiBold`, `logo-DarkMode`), all-digit dates and ids (`report-20240315`),
//! and word-and-number names (`favicon1`, `v2-beta1`, `1024x768`) are not hashes. A random
//! 8-character token is recognised when its letter runs do not read as words (a camel-case,
//! lower- or upper-case run with vowels and no long consonant cluster), or when it mixes
//! letters and digits in ways names rarely do. Measured on random tokens: about 96% of Rollup
//! hashes and 89% of esbuild hashes are recognised; the rest (mostly all-letter tokens that
//! happen to read like words) get the ordinary `Cache-Control` and are revalidated with their
//! ETag, the safe direction. `immutable_paths` (`["/assets/"]` for Vite) is exact and should
//! be preferred where a build puts its hashed files in one directory.
//!
//! Before the test, a trailing `.map` (a source map follows its file), the extension, and
//! bundler suffixes (`.chunk`, `.min`, `.bundle`, `.module`) are removed.

/// Whether `name` (a file name, no directories) looks content-hashed.
pub fn is_hashed(name: &str) -> bool {
    let name = name.strip_suffix(".map").unwrap_or(name);
    let Some((mut stem, _ext)) = name.rsplit_once('.') else {
        return false;
    };
    while let Some(s) = [".chunk", ".min", ".bundle", ".module"]
        .iter()
        .find_map(|suffix| stem.strip_suffix(suffix))
    {
        stem = s;
    }
    hex_tail(stem) || base64_tail(stem)
}

/// A hex hash as the last `.`/`-` separated token (or the whole stem).
fn hex_tail(stem: &str) -> bool {
    let token = stem.rsplit(['.', '-']).next().unwrap_or(stem);
    (8..=64).contains(&token.len())
        && token
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && token.bytes().any(|b| b.is_ascii_digit())
        && token.bytes().any(|b| b.is_ascii_alphabetic())
}

/// An 8-character base64url hash at the end of the stem, after a separator (or as the
/// whole stem, where it must look clearly random).
fn base64_tail(stem: &str) -> bool {
    const LEN: usize = 8;
    let bytes = stem.as_bytes();
    if bytes.len() < LEN {
        return false;
    }
    let token = &bytes[bytes.len() - LEN..];
    let whole = bytes.len() == LEN;
    if !whole && !matches!(bytes[bytes.len() - LEN - 1], b'-' | b'.') {
        return false;
    }
    if !token
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return false;
    }
    if token.iter().all(u8::is_ascii_digit) {
        return false;
    }
    randomness(token) >= if whole { 3 } else { 2 }
}

/// How unlike a name a token is: 2 points per letter run that does not read as a word, 1 per
/// digit run between letters, 1 for an underscore, 1 for letters mixed with digits, 1 for
/// several lone letters.
fn randomness(token: &[u8]) -> u32 {
    let mut score = 0;
    let mut lone_letters = 0;
    for piece in pieces(token) {
        if piece.len() == 1 {
            lone_letters += 1;
        } else if !wordy(piece) {
            score += 2;
        }
    }
    if lone_letters >= 2 {
        score += 1;
    }
    // Digits between letters (`p3d`), which names rarely have beyond a version (`v2b...`).
    let mut i = 0;
    while i < token.len() {
        if token[i].is_ascii_digit() {
            let start = i;
            while i < token.len() && token[i].is_ascii_digit() {
                i += 1;
            }
            if start > 0
                && token[start - 1].is_ascii_alphabetic()
                && i < token.len()
                && token[i].is_ascii_alphabetic()
            {
                score += 1;
            }
        } else {
            i += 1;
        }
    }
    if token.contains(&b'_') {
        score += 1;
    }
    if token.iter().any(u8::is_ascii_digit) && token.iter().any(u8::is_ascii_alphabetic) {
        score += 1;
    }
    score
}

/// Letter runs, split where a lower-case letter is followed by an upper-case one (camel case).
fn pieces(token: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, &b) in token.iter().enumerate() {
        if !b.is_ascii_alphabetic() {
            if let Some(s) = start.take() {
                out.push(&token[s..i]);
            }
            continue;
        }
        match start {
            None => start = Some(i),
            Some(s) if b.is_ascii_uppercase() && token[i - 1].is_ascii_lowercase() => {
                out.push(&token[s..i]);
                start = Some(i);
            }
            Some(_) => {}
        }
    }
    if let Some(s) = start {
        out.push(&token[s..]);
    }
    out
}

fn is_vowel(b: u8) -> bool {
    matches!(
        b.to_ascii_lowercase(),
        b'a' | b'e' | b'i' | b'o' | b'u' | b'y'
    )
}

/// Whether a letter run reads as a word: lower case, upper case or capitalised, with vowels
/// (at least one per four letters in longer runs) and no long consonant cluster.
fn wordy(p: &[u8]) -> bool {
    let lower = p.iter().all(u8::is_ascii_lowercase);
    let upper = p.iter().all(u8::is_ascii_uppercase);
    let capitalised = p[0].is_ascii_uppercase() && p[1..].iter().all(u8::is_ascii_lowercase);
    if !(lower || upper || capitalised) {
        return false;
    }
    let vowels = p.iter().filter(|&&b| is_vowel(b)).count();
    if vowels == 0 || (p.len() >= 6 && vowels * 4 < p.len()) {
        return false;
    }
    // Upper-case runs are held to a shorter cluster: random base32 is upper case.
    let max_cluster = if upper && p.len() >= 5 { 3 } else { 4 };
    let mut run = 0;
    for &b in p {
        run = if is_vowel(b) { 0 } else { run + 1 };
        if run > max_cluster {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names real bundlers emitted (default settings), one line per tool.
    const HASHED: &[&str] = &[
        // Vite 5+ / Rollup 4 (base64url, `-` and `_` included), with source maps.
        "index-BXp3d9fK.js",
        "page01-C7-9Ngwl.js",
        "page01-C7-9Ngwl.js.map",
        "page29-6Ywn-_AW.js",
        "vendor-CbBDzbnD.js",
        "index-BjA6LoBN.css",
        "logo-DlAUqK2U.svg",
        "react-CHdo91hT.svg",
        // SvelteKit / Nuxt (`.` separator, base64url).
        "start.BjA6LoBN.js",
        "0.CbBDzbnD.js",
        "entry.BUtlU-Qv.js",
        // esbuild, Angular 17+, Remix (base32).
        "chunk-5VTAHLQN.js",
        "main-RYTPKNE7.js",
        "polyfills-FFHMD2TL.js",
        "entry.client-C2Q4VQXR.js",
        // webpack, CRA, Parcel, Next.js, Angular, Gatsby, Vite 2 (hex).
        "main.3f2a1b9c.js",
        "main.3f2a1b9c.chunk.js",
        "787.8e4d1d2e.chunk.js",
        "vendor.4e5f6a7b8c9d0e1f.chunk.js",
        "app.a1b2c3d4e5f6a7b8c9d0.bundle.js",
        "index.975ef6c8.js",
        "framework-2c79e2a64abdb08b.js",
        "8a3f1e2b9c4d5e6f.css",
        "main.7b2c3d4e5f6a7b8c.js",
        "app-b3c2d9e0f1a2b3c4d5e6.js",
        "index.1a2b3c4d.css",
        "styles.0f1e2d3c.min.css",
        "logo-a1b2c3d4.svg",
    ];

    /// Names that are not hashed and must never be pinned for a year.
    const PLAIN: &[&str] = &[
        "index.html",
        "app.js",
        "favicon.ico",
        "user-dashboard.js",
        "User-Dashboard.js",
        "a-b.js",
        "Inter-SemiBold.woff2",
        "Inter-Regular.woff2",
        "Roboto-BoldItalic.ttf",
        "OpenSans-ExtraBold.woff",
        "logo-DarkMode.svg",
        "icon-ArrowLeft.svg",
        "report-20240315.pdf",
        "export-2024-03-15.csv",
        "invoice-12345678.pdf",
        "hero-1024x768.jpg",
        "favicon1.png",
        "chart-v2-beta1.js",
        "bootstrap-5.3.0-alpha1.js",
        "jquery-3.7.1.min.js",
        "logo-FACEBOOK.svg",
        "deadbeef.js",
        "README.md",
        "service-worker.js",
        "manifest.webmanifest",
        "robots.txt",
        "photo_original.jpeg",
        "font-Medium.woff2",
    ];

    #[test]
    fn real_bundler_names_are_hashed() {
        for name in HASHED {
            assert!(is_hashed(name), "{name} should count as hashed");
        }
    }

    #[test]
    fn ordinary_names_are_not() {
        for name in PLAIN {
            assert!(!is_hashed(name), "{name} must not count as hashed");
        }
    }

    /// Random tokens as the bundlers make them: most are recognised (the rest only lose the
    /// long cache, they are still revalidated).
    #[test]
    fn most_random_hashes_are_recognised() {
        const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        const B32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        const HEX: &[u8] = b"0123456789abcdef";
        let mut rng = fastrand::Rng::with_seed(7);
        let mut rate = |alphabet: &[u8], len: usize, sep: char| {
            let n = 20_000;
            let hits = (0..n)
                .filter(|_| {
                    let token: String = (0..len)
                        .map(|_| alphabet[rng.usize(..alphabet.len())] as char)
                        .collect();
                    is_hashed(&format!("index{sep}{token}.js"))
                })
                .count();
            hits as f64 / n as f64
        };
        let rollup = rate(B64, 8, '-');
        let esbuild = rate(B32, 8, '-');
        let webpack = rate(HEX, 20, '.');
        let parcel = rate(HEX, 8, '.');
        assert!(rollup > 0.93, "rollup {rollup}");
        assert!(esbuild > 0.85, "esbuild {esbuild}");
        assert!(webpack > 0.99, "webpack {webpack}");
        // 8 hex digits are all digits 2.3% of the time: those look like dates and ids.
        assert!(parcel > 0.95, "parcel {parcel}");
    }
}
