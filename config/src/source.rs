//! The text of a configuration file and the spans of its keys, to turn key paths into line
//! and column.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::{KeyPath, Seg};

/// Where each value of the document is, by key.
#[derive(Debug, Clone)]
enum Node {
    Table(Vec<(String, Range<usize>, Range<usize>, Node)>),
    Array(Vec<(Range<usize>, Node)>),
    Leaf,
}

impl Node {
    fn of_table(t: &DeTable<'_>) -> Node {
        Node::Table(
            t.iter()
                .map(|(k, v)| (k.get_ref().to_string(), k.span(), v.span(), Node::of(v)))
                .collect(),
        )
    }

    fn of(v: &Spanned<DeValue<'_>>) -> Node {
        match v.get_ref() {
            DeValue::Table(t) => Node::of_table(t),
            DeValue::Array(a) => Node::Array(a.iter().map(|i| (i.span(), Node::of(i))).collect()),
            _ => Node::Leaf,
        }
    }
}

/// A configuration document: its name, its text and the spans of its keys.
#[derive(Debug, Clone)]
pub struct Source {
    name: String,
    line_starts: Vec<usize>,
    text: String,
    root: Node,
}

impl Source {
    /// Indexes a parsed document. `root` must come from parsing `text`.
    pub(crate) fn new(name: &str, text: &str, root: &DeTable<'_>) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            name: name.to_string(),
            line_starts,
            text: text.to_string(),
            root: Node::of_table(root),
        }
    }

    /// The document's name as shown in errors (the path as the user gave it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line + 1, col + 1)
    }

    /// The byte span of the value at `path`, or of its nearest existing ancestor.
    pub fn span_of(&self, path: &KeyPath) -> Option<Range<usize>> {
        let mut best = None;
        let mut cur = &self.root;
        for seg in &path.0 {
            let next = match (seg, cur) {
                (Seg::Key(k), Node::Table(entries)) => entries
                    .iter()
                    .find(|(name, ..)| name == k)
                    // Implicit tables (`[upstreams.app]` makes `upstreams`) have empty value
                    // spans: point at the key instead.
                    .map(|(_, ks, vs, n)| {
                        (
                            if vs.is_empty() {
                                ks.clone()
                            } else {
                                vs.clone()
                            },
                            n,
                        )
                    }),
                (Seg::Index(i), Node::Array(items)) => items.get(*i).map(|(s, n)| (s.clone(), n)),
                _ => None,
            };
            match next {
                Some((span, node)) => {
                    best = Some(span);
                    cur = node;
                }
                None => break,
            }
        }
        best
    }
}
