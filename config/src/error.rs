//! Configuration errors: every problem carries the file, line, column, key path and reason.
//!
//! Errors are collected, never thrown one at a time: a broken file reports all of its problems
//! in one run of `portico check`, each in the form
//! `portico.toml:12:11: routes[2].upstream: no upstream named "ap"`.

use std::fmt;

/// One segment of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Seg {
    /// A key inside a table.
    Key(String),
    /// A position inside an array (0-based).
    Index(usize),
}

/// The path of a key inside the document, such as `routes[2].upstream`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    /// The document root.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// This path extended by a table key.
    pub fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.to_string()));
        Self(segs)
    }

    /// This path extended by an array index.
    pub fn index(&self, index: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(index));
        Self(segs)
    }

    /// Parses the dotted form used in code (`"server.threads"`, `"routes[1].path"`).
    ///
    /// Keys containing dots cannot be expressed this way; build those with [`KeyPath::key`].
    pub fn parse(dotted: &str) -> Self {
        let mut segs = Vec::new();
        for part in dotted.split('.').filter(|p| !p.is_empty()) {
            let (name, mut rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if !name.is_empty() {
                segs.push(Seg::Key(name.to_string()));
            }
            while let Some(end) = rest.find(']') {
                if let Ok(i) = rest[1..end].parse() {
                    segs.push(Seg::Index(i));
                }
                rest = &rest[end + 1..];
            }
        }
        Self(segs)
    }

    /// True for the document root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for seg in &self.0 {
            match seg {
                Seg::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    if is_bare_key(k) {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in, as given by the user, or `<embedded default>`.
    pub file: String,
    /// 1-based line, when the problem can be located in the text.
    pub line: Option<usize>,
    /// 1-based column (in characters), when the problem can be located in the text.
    pub column: Option<usize>,
    /// The key the problem is about; empty for document-level problems.
    pub key: KeyPath,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        f.write_str(": ")?;
        if !self.key.is_root() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one configuration file. Never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// A single document-level error (for example, the file could not be read).
    pub fn single(file: &str, message: impl Into<String>) -> Self {
        Self(vec![ConfigError {
            file: file.to_string(),
            line: None,
            column: None,
            key: KeyPath::root(),
            message: message.into(),
        }])
    }

    /// The individual problems, in document order.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Collects problems while a document is checked, so that all of them are reported at once.
#[derive(Debug, Default)]
pub struct Problems {
    items: Vec<(KeyPath, Option<std::ops::Range<usize>>, String)>,
}

impl Problems {
    /// Records a problem about `key`; its location is looked up in the document later.
    pub fn add(&mut self, key: KeyPath, message: impl Into<String>) {
        self.items.push((key, None, message.into()));
    }

    /// Records a problem with a known byte span in the document.
    pub fn add_at(
        &mut self,
        key: KeyPath,
        span: Option<std::ops::Range<usize>>,
        message: impl Into<String>,
    ) {
        self.items.push((key, span, message.into()));
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Number of problems recorded.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Resolves locations against `source` and returns the errors sorted by position.
    ///
    /// Only the first problem recorded for a key is kept: a later one is usually a consequence
    /// (an unset `${VAR}` also makes the address it was in invalid).
    pub fn into_errors(self, source: &crate::source::Source) -> ConfigErrors {
        let mut seen = std::collections::HashSet::new();
        // "missing `x`" on a table is a consequence when `table.x` itself was reported (a key
        // with a bad value is dropped so the rest of its table can still be checked).
        let reported: Vec<KeyPath> = self.items.iter().map(|(k, _, _)| k.clone()).collect();
        let consequence = |key: &KeyPath, msg: &str| {
            msg.starts_with("missing")
                && reported.iter().any(|other| {
                    other.0.len() == key.0.len() + 1
                        && other.0.starts_with(&key.0)
                        && matches!(other.0.last(), Some(Seg::Key(k)) if msg.contains(&format!("`{k}`")))
                })
        };
        let items: Vec<_> = self
            .items
            .iter()
            .filter(|(key, _, msg)| !consequence(key, msg))
            .cloned()
            .collect();
        let mut out: Vec<ConfigError> = items
            .into_iter()
            .filter(|(key, _, _)| key.is_root() || seen.insert(key.clone()))
            .map(|(key, span, message)| {
                let span = span.or_else(|| source.span_of(&key));
                let (line, column) = match span {
                    Some(s) => {
                        let (l, c) = source.line_col(s.start);
                        (Some(l), Some(c))
                    }
                    None => (None, None),
                };
                ConfigError {
                    file: source.name().to_string(),
                    line,
                    column,
                    key,
                    message,
                }
            })
            .collect();
        out.sort_by_key(|e| (e.line.unwrap_or(usize::MAX), e.column.unwrap_or(0)));
        out.dedup();
        ConfigErrors(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_path_display_quotes_odd_keys() {
        let p = KeyPath::root()
            .key("upstreams")
            .key("my app")
            .key("backends")
            .index(2);
        assert_eq!(p.to_string(), "upstreams.\"my app\".backends[2]");
    }

    #[test]
    fn key_path_parse_round_trips() {
        for s in [
            "routes[2].upstream",
            "server.threads",
            "listeners[0].tls.certificates[1].key",
        ] {
            assert_eq!(KeyPath::parse(s).to_string(), s);
        }
    }

    #[test]
    fn error_display_has_file_line_col_key_reason() {
        let e = ConfigError {
            file: "portico.toml".into(),
            line: Some(12),
            column: Some(11),
            key: KeyPath::parse("routes[2].upstream"),
            message: "no upstream named \"ap\"".into(),
        };
        assert_eq!(
            e.to_string(),
            "portico.toml:12:11: routes[2].upstream: no upstream named \"ap\""
        );
    }
}
