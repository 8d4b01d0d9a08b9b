//! `${VAR}` expansion of string values from the environment.
//!
//! Syntax, applied to every string value (never to keys or comments):
//! - `${VAR}`: the variable's value; an error when it is not set.
//! - `${VAR:-default}`: `default` when the variable is unset or empty.
//! - `${VAR-default}`: `default` only when the variable is unset.
//! - `$$`: a literal `$`. A `$` not followed by `{` or `$` is kept as it is.
//!
//! Defaults are literal text (no nesting). Variable names are `[A-Za-z_][A-Za-z0-9_]*`.

use std::borrow::Cow;
use std::collections::HashMap;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::{KeyPath, Problems};

/// Where `${VAR}` values come from. The process environment in production; a map in tests.
pub trait Env {
    /// The value of `name`, or `None` when unset.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Env for HashMap<&str, &str> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(|s| s.to_string())
    }
}

/// Expands one string. Returns the input unchanged (borrowed) when it holds no `$`.
pub fn expand_str<'a>(input: &'a str, env: &dyn Env) -> Result<Cow<'a, str>, String> {
    if !input.contains('$') {
        return Ok(Cow::Borrowed(input));
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {input:?}"))?;
            out.push_str(&expand_one(&body[..end], env)?);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(Cow::Owned(out))
}

fn expand_one(expr: &str, env: &dyn Env) -> Result<String, String> {
    let name_end = expr
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(expr.len());
    let name = &expr[..name_end];
    let op = &expr[name_end..];
    if name.is_empty() || name.as_bytes()[0].is_ascii_digit() {
        return Err(format!(
            "invalid variable name in `${{{expr}}}` (expected letters, digits and `_`)"
        ));
    }
    let value = env.var(name);
    if let Some(default) = op.strip_prefix(":-") {
        Ok(value
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_string()))
    } else if let Some(default) = op.strip_prefix('-') {
        Ok(value.unwrap_or_else(|| default.to_string()))
    } else if op.is_empty() {
        value.ok_or_else(|| {
            format!("environment variable {name} is not set (write ${{{name}:-default}} to give a default)")
        })
    } else {
        Err(format!(
            "unsupported expansion `${{{expr}}}` (use ${{VAR}}, ${{VAR:-default}} or ${{VAR-default}})"
        ))
    }
}

/// Expands every string value of the document in place, recording problems with their spans.
pub(crate) fn expand_document(root: &mut DeTable<'_>, env: &dyn Env, problems: &mut Problems) {
    for (key, value) in root.iter_mut() {
        let path = KeyPath::root().key(key.get_ref());
        expand_value(value, &path, env, problems);
    }
}

fn expand_value(
    value: &mut Spanned<DeValue<'_>>,
    path: &KeyPath,
    env: &dyn Env,
    problems: &mut Problems,
) {
    let span = value.span();
    match value.get_mut() {
        DeValue::String(s) => match expand_str(s, env) {
            Ok(Cow::Borrowed(_)) => {}
            Ok(Cow::Owned(new)) => *s = Cow::Owned(new),
            Err(msg) => problems.add_at(path.clone(), Some(span), msg),
        },
        DeValue::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_value(item, &path.index(i), env, problems);
            }
        }
        DeValue::Table(table) => {
            for (key, item) in table.iter_mut() {
                let p = path.key(key.get_ref());
                expand_value(item, &p, env, problems);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> HashMap<&'static str, &'static str> {
        HashMap::from([("PORT", "9000"), ("EMPTY", ""), ("FLY_REGION", "ams")])
    }

    #[test]
    fn plain_strings_are_borrowed() {
        assert!(matches!(
            expand_str("abc", &env()),
            Ok(Cow::Borrowed("abc"))
        ));
    }

    #[test]
    fn expands_set_variables() {
        assert_eq!(
            expand_str("0.0.0.0:${PORT}", &env()).unwrap(),
            "0.0.0.0:9000"
        );
        assert_eq!(
            expand_str("${FLY_REGION}-${PORT}", &env()).unwrap(),
            "ams-9000"
        );
    }

    #[test]
    fn defaults() {
        assert_eq!(expand_str("${NOPE:-local}", &env()).unwrap(), "local");
        assert_eq!(expand_str("${EMPTY:-x}", &env()).unwrap(), "x");
        assert_eq!(expand_str("${EMPTY-x}", &env()).unwrap(), "");
        assert_eq!(expand_str("${NOPE-x}", &env()).unwrap(), "x");
        assert_eq!(expand_str("${NOPE:-}", &env()).unwrap(), "");
        assert_eq!(expand_str("${PORT:-1}", &env()).unwrap(), "9000");
    }

    #[test]
    fn dollar_escapes_and_lone_dollars() {
        assert_eq!(expand_str("a$$b", &env()).unwrap(), "a$b");
        assert_eq!(expand_str("$$${PORT}", &env()).unwrap(), "$9000");
        assert_eq!(expand_str("cost: 5$", &env()).unwrap(), "cost: 5$");
        assert_eq!(expand_str("^/a$", &env()).unwrap(), "^/a$");
    }

    #[test]
    fn errors() {
        assert!(expand_str("${NOPE}", &env())
            .unwrap_err()
            .contains("NOPE is not set"));
        assert!(expand_str("${PORT", &env())
            .unwrap_err()
            .contains("unterminated"));
        assert!(expand_str("${}", &env())
            .unwrap_err()
            .contains("invalid variable"));
        assert!(expand_str("${1A}", &env())
            .unwrap_err()
            .contains("invalid variable"));
        assert!(expand_str("${A:=b}", &env())
            .unwrap_err()
            .contains("unsupported"));
    }
}
