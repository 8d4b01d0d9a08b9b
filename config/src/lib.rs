//! Portico's configuration: the TOML file model, its validation, and the immutable runtime
//! model the proxy runs from.
//!
//! This crate is pure: it parses text and checks it, and knows nothing of sockets or async
//! runtimes. The proxy turns a [`Config`] into running state.
//!
//! # Where values come from (precedence)
//! 1. The file given with `portico run -c FILE` (or the `PORTICO_CONFIG` variable); without
//!    one, the embedded default ([`defaults::EMBEDDED_CONFIG`]).
//! 2. Inside the file, `${VAR}`, `${VAR:-default}` and `${VAR-default}` in string values are
//!    replaced from the process environment when the file is loaded (and again on reload), so
//!    `address = "0.0.0.0:${PORT:-8080}"` and `region = "${FLY_REGION:-local}"` work.
//!    Numbers and booleans may be written as strings for this purpose.
//! 3. Anything left unset takes the default documented on its key (named constants in
//!    [`defaults`]).
//!
//! Relative file paths (certificates, keys) are resolved against the config file's directory.
//!
//! # Errors
//! Loading never stops at the first problem: syntax errors, type errors, unknown keys and
//! semantic problems (an unknown upstream, a duplicate address) are all collected into
//! [`ConfigErrors`], each with file, line, column, key path and reason.

mod closed;
pub mod defaults;
pub mod error;
pub mod expand;
mod file;
pub mod model;
pub mod routing;
pub mod source;
pub mod units;
mod validate;

use std::path::Path;

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

pub use error::{ConfigError, ConfigErrors, KeyPath, Problems};
pub use expand::{Env, ProcessEnv};
pub use model::*;
pub use routing::RouteTable;
pub use source::Source;
pub use validate::{
    is_token, parse_backend_address, parse_dns_server, parse_hash_key, parse_listen_address,
};

/// A loaded configuration together with the document it came from (for locating later errors,
/// such as an unreadable certificate, in the file).
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// The document, to map key paths to lines.
    pub source: Source,
}

/// Reads, expands, parses and validates the file at `path` with the process environment.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    load_with_env(path, &ProcessEnv)
}

/// Like [`load`], with an explicit environment.
pub fn load_with_env(path: &Path, env: &dyn Env) -> Result<Loaded, ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::single(&name, format!("cannot read the config file: {e}")))?;
    parse(&text, &name, path.parent(), env)
}

/// The embedded default configuration, expanded with `env`.
pub fn embedded(env: &dyn Env) -> Result<Loaded, ConfigErrors> {
    parse(
        defaults::EMBEDDED_CONFIG,
        defaults::EMBEDDED_NAME,
        None,
        env,
    )
}

const SECTIONS: [&str; 7] = [
    "server",
    "listeners",
    "admin",
    "dns",
    "replay",
    "upstreams",
    "routes",
];

/// Parses and validates a document. `name` is how the document is shown in errors;
/// `base_dir` is where relative paths are resolved from.
pub fn parse(
    text: &str,
    name: &str,
    base_dir: Option<&Path>,
    env: &dyn Env,
) -> Result<Loaded, ConfigErrors> {
    let (root, syntax_errors) = DeTable::parse_recoverable(text);
    let mut problems = Problems::default();
    if !syntax_errors.is_empty() {
        let source = Source::new(name, text, root.get_ref());
        for e in syntax_errors {
            problems.add_at(KeyPath::root(), e.span(), e.message().to_string());
        }
        return Err(problems.into_errors(&source));
    }
    let mut root = root;
    expand::expand_document(root.get_mut(), env, &mut problems);
    let source = Source::new(name, text, root.get_ref());

    let mut sections = validate::Sections::default();
    for (key, value) in root.into_inner() {
        let key_span = key.span();
        let key = key.into_inner();
        let path = KeyPath::root().key(&key);
        match key.as_ref() {
            "server" => sections.server = section(value, &path, &mut problems),
            "admin" => sections.admin = section(value, &path, &mut problems),
            "dns" => sections.dns = section(value, &path, &mut problems),
            "replay" => sections.replay = section(value, &path, &mut problems),
            "listeners" => {
                sections.listeners_present = true;
                for (i, v) in array(value, &path, "[[listeners]]", &mut problems) {
                    if let Some(l) = section(v, &path.index(i), &mut problems) {
                        sections.listeners.push((i, l));
                    }
                }
            }
            "routes" => {
                sections.routes_present = true;
                for (i, v) in array(value, &path, "[[routes]]", &mut problems) {
                    if let Some(r) = section(v, &path.index(i), &mut problems) {
                        sections.routes.push((i, r));
                    }
                }
            }
            "upstreams" => {
                sections.upstreams_present = true;
                let span = value.span();
                match value.into_inner() {
                    DeValue::Table(t) => {
                        for (name, v) in t {
                            let name = name.into_inner().into_owned();
                            if let Some(u) = section(v, &path.key(&name), &mut problems) {
                                sections.upstreams.push((name, u));
                            }
                        }
                    }
                    _ => {
                        problems.add_at(path, Some(span), "expected tables named [upstreams.NAME]")
                    }
                }
            }
            other => {
                let hint = validate::suggest(other, SECTIONS.iter().copied());
                problems.add_at(
                    path.clone(),
                    Some(key_span),
                    format!(
                        "unknown section `{other}`{hint}; expected one of {}",
                        SECTIONS.join(", ")
                    ),
                );
            }
        }
    }

    let mut validator = validate::Validator {
        problems: &mut problems,
        base_dir,
        has_primary: false,
    };
    let config = validator.build(sections, name);
    match config {
        Some(config) if problems.is_empty() => Ok(Loaded { config, source }),
        _ => Err(problems.into_errors(&source)),
    }
}

/// Deserializes one section on its own, so one broken section does not hide the others.
fn section<'i, T: DeserializeOwned>(
    mut value: Spanned<DeValue<'i>>,
    path: &KeyPath,
    problems: &mut Problems,
) -> Option<T> {
    let whole_span = value.span();
    // serde stops at the first error; to report every bad key of a section, each offending
    // table key is removed and deserialization tried again (a bounded number of times).
    let mut rounds = 0;
    loop {
        rounds += 1;
        let err = match serde_path_to_error::deserialize::<_, T>(value.clone().into_deserializer())
        {
            // Partial success (bad keys removed) still feeds validation, so problems that depend
            // on the rest of the section are reported too; the load fails either way.
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        let mut rel = KeyPath::root();
        for seg in err.path().iter() {
            match seg {
                serde_path_to_error::Segment::Seq { index } => rel = rel.index(*index),
                serde_path_to_error::Segment::Map { key: k } => rel = rel.key(k),
                serde_path_to_error::Segment::Enum { variant } => rel = rel.key(variant),
                serde_path_to_error::Segment::Unknown => {}
            }
        }
        let inner = err.into_inner();
        let span = inner.span().or(Some(whole_span.clone()));
        let (rel, message) = describe(rel, inner.message());
        let mut key = path.clone();
        key.0.extend(rel.0.iter().cloned());
        problems.add_at(key, span, message);
        if rounds >= 32 || !remove_key(&mut value, &rel.0) {
            return None;
        }
    }
}

/// Removes the table key at `path` (relative to `value`). Array elements are never removed,
/// since that would shift the indices reported for the ones after them.
fn remove_key(value: &mut Spanned<DeValue<'_>>, path: &[error::Seg]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = value;
    for seg in parents {
        cur = match (seg, cur.get_mut()) {
            (error::Seg::Key(k), DeValue::Table(t)) => match t.get_mut(k.as_str()) {
                Some(v) => v,
                None => return false,
            },
            (error::Seg::Index(i), DeValue::Array(a)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, cur.get_mut()) {
        (error::Seg::Key(k), DeValue::Table(t)) => t.remove(k.as_str()).is_some(),
        _ => false,
    }
}

/// Rewrites serde's messages into the words of this config (keys, not fields).
fn describe(key: KeyPath, message: &str) -> (KeyPath, String) {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((field, expected)) = rest.split_once('`') {
            let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            let hint = validate::suggest(field, known.iter().copied());
            let list = if known.is_empty() {
                String::new()
            } else {
                format!("; expected one of {}", known.join(", "))
            };
            let already_there = matches!(key.0.last(), Some(error::Seg::Key(k)) if k == field);
            let key = if already_there { key } else { key.key(field) };
            return (key, format!("unknown key{hint}{list}"));
        }
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        if let Some((field, _)) = rest.split_once('`') {
            return (key, format!("missing key `{field}`"));
        }
    }
    (key, message.to_string())
}

/// The elements of an array of tables, or a problem when the value is something else.
fn array<'i>(
    value: Spanned<DeValue<'i>>,
    path: &KeyPath,
    shape: &str,
    problems: &mut Problems,
) -> Vec<(usize, Spanned<DeValue<'i>>)> {
    let span = value.span();
    match value.into_inner() {
        DeValue::Array(items) => items.iter().cloned().enumerate().collect(),
        _ => {
            problems.add_at(
                path.clone(),
                Some(span),
                format!("expected an array of tables written as {shape}"),
            );
            Vec::new()
        }
    }
}
