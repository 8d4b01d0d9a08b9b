//! One typed builder for the integration tests' configurations, instead of a `format!` TOML
//! template per test file. A test names what it changes (`.balance("random")`,
//! `Route::to("app").set("max_body", "1KiB")`) and the builder writes a TOML document with
//! the `toml` crate, so values are quoted and nested correctly and a setting cannot land in
//! the wrong table.
//!
//! The defaults are what most tests want: a plain listener `http` and the admin listener, both
//! on ephemeral loopback ports. Values are anything serde serializes (strings, numbers, bools,
//! `serde_json::json!` objects and arrays for nested tables).
//!
//! Tests whose subject is the configuration text itself (located errors, reload edits,
//! environment expansion) still write TOML by hand.

use std::fmt;

use serde::Serialize;
use toml::{Table, Value};

/// A value for a key: anything serde can serialize as TOML.
pub fn value(v: impl Serialize) -> Value {
    Value::try_from(v).unwrap_or_else(|e| panic!("not a TOML value: {e}"))
}

/// A whole configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    server: Table,
    sections: Vec<(String, Table)>,
    listeners: Vec<Listener>,
    admin: Option<Table>,
    upstreams: Vec<Upstream>,
    routes: Vec<Route>,
}

impl Default for Config {
    fn default() -> Self {
        Self::new()
    }
}

impl Config {
    /// A plain listener `http` and the admin listener, both on `127.0.0.1:0`; no upstream.
    pub fn new() -> Self {
        Self::bare()
            .listener(Listener::http("http"))
            .admin_set("address", "127.0.0.1:0")
    }

    /// Nothing at all (no listener, no admin).
    pub fn bare() -> Self {
        Self {
            server: Table::new(),
            sections: Vec::new(),
            listeners: Vec::new(),
            admin: None,
            upstreams: Vec::new(),
            routes: Vec::new(),
        }
    }

    /// A key of `[server]`.
    pub fn server(mut self, key: &str, v: impl Serialize) -> Self {
        self.server.insert(key.into(), value(v));
        self
    }

    /// A key of another top-level table (`[dns]`, `[replay]`).
    pub fn section(mut self, name: &str, key: &str, v: impl Serialize) -> Self {
        match self.sections.iter_mut().find(|(n, _)| n == name) {
            Some((_, t)) => {
                t.insert(key.into(), value(v));
            }
            None => {
                let mut t = Table::new();
                t.insert(key.into(), value(v));
                self.sections.push((name.into(), t));
            }
        }
        self
    }

    /// Adds a listener.
    pub fn listener(mut self, l: Listener) -> Self {
        self.listeners.push(l);
        self
    }

    /// A key of the first listener (the `http` one of [`Config::new`]).
    pub fn listener_set(mut self, key: &str, v: impl Serialize) -> Self {
        let l = self
            .listeners
            .first_mut()
            .expect("a listener to set keys on");
        l.0.insert(key.into(), value(v));
        self
    }

    /// A key of `[admin]` (created if absent).
    pub fn admin_set(mut self, key: &str, v: impl Serialize) -> Self {
        self.admin
            .get_or_insert_with(Table::new)
            .insert(key.into(), value(v));
        self
    }

    /// No `[admin]` table.
    pub fn no_admin(mut self) -> Self {
        self.admin = None;
        self
    }

    /// Adds an upstream.
    pub fn upstream(mut self, u: Upstream) -> Self {
        self.upstreams.push(u);
        self
    }

    /// A key of the upstream added as `name`.
    pub fn upstream_set(mut self, name: &str, key: &str, v: impl Serialize) -> Self {
        let u = self.upstreams.iter_mut().find(|u| u.name == name);
        let u = u.unwrap_or_else(|| panic!("no upstream {name} to set {key} on"));
        u.table.insert(key.into(), value(v));
        self
    }

    /// A key of the `index`th route added.
    pub fn route_set(mut self, index: usize, key: &str, v: impl Serialize) -> Self {
        let r = self.routes.get_mut(index).expect("a route to set keys on");
        r.0.insert(key.into(), value(v));
        self
    }

    /// Adds a route.
    pub fn route(mut self, r: Route) -> Self {
        self.routes.push(r);
        self
    }

    /// The TOML document.
    pub fn render(&self) -> String {
        let mut doc = Table::new();
        if !self.server.is_empty() {
            doc.insert("server".into(), Value::Table(self.server.clone()));
        }
        for (name, t) in &self.sections {
            doc.insert(name.clone(), Value::Table(t.clone()));
        }
        if !self.listeners.is_empty() {
            let ls = self.listeners.iter().map(|l| Value::Table(l.0.clone()));
            doc.insert("listeners".into(), Value::Array(ls.collect()));
        }
        if let Some(a) = &self.admin {
            doc.insert("admin".into(), Value::Table(a.clone()));
        }
        if !self.upstreams.is_empty() {
            let mut ups = Table::new();
            for u in &self.upstreams {
                ups.insert(u.name.clone(), Value::Table(u.table.clone()));
            }
            doc.insert("upstreams".into(), Value::Table(ups));
        }
        if !self.routes.is_empty() {
            let rs = self.routes.iter().map(|r| Value::Table(r.0.clone()));
            doc.insert("routes".into(), Value::Array(rs.collect()));
        }
        toml::to_string(&doc).unwrap_or_else(|e| panic!("config does not render: {e}"))
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

/// A `[[listeners]]` entry.
#[derive(Debug, Clone)]
pub struct Listener(Table);

impl Listener {
    /// A plain listener on `127.0.0.1:0`.
    pub fn http(name: &str) -> Self {
        Self(Table::new())
            .set("name", name)
            .set("address", "127.0.0.1:0")
    }

    /// A TLS listener on `127.0.0.1:0` with these certificate and key files.
    pub fn tls(name: &str, certificates: &[(&str, &str)]) -> Self {
        let certs: Vec<_> = certificates
            .iter()
            .map(|(cert, key)| serde_json::json!({ "cert": cert, "key": key }))
            .collect();
        Self::http(name).set("tls", serde_json::json!({ "certificates": certs }))
    }

    /// Any key.
    pub fn set(mut self, key: &str, v: impl Serialize) -> Self {
        self.0.insert(key.into(), value(v));
        self
    }
}

/// An `[upstreams.NAME]` table.
#[derive(Debug, Clone)]
pub struct Upstream {
    name: String,
    table: Table,
}

impl Upstream {
    /// An upstream with these backend addresses.
    pub fn new<A: fmt::Display>(name: &str, backends: impl IntoIterator<Item = A>) -> Self {
        let list: Vec<String> = backends.into_iter().map(|a| a.to_string()).collect();
        Self {
            name: name.into(),
            table: Table::new(),
        }
        .set("backends", list)
    }

    /// An upstream whose backends are tables (`{ address, id, region, weight }`), given as
    /// `serde_json::json!` objects.
    pub fn with_backends(name: &str, backends: Vec<serde_json::Value>) -> Self {
        Self {
            name: name.into(),
            table: Table::new(),
        }
        .set("backends", backends)
    }

    /// An upstream with nothing set yet.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.into(),
            table: Table::new(),
        }
    }

    /// An upstream found by DNS (`discovery = ...`), no static backends.
    pub fn discovered(name: &str, discovery: impl Serialize) -> Self {
        Self {
            name: name.into(),
            table: Table::new(),
        }
        .set("discovery", discovery)
    }

    /// `balance = ...`.
    pub fn balance(self, how: &str) -> Self {
        self.set("balance", how)
    }

    /// Adds an active health check (`[[upstreams.NAME.checks]]`).
    pub fn check(mut self, check: serde_json::Value) -> Self {
        let checks = self
            .table
            .entry("checks")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(a) = checks {
            a.push(value(check));
        }
        self
    }

    /// Any key.
    pub fn set(mut self, key: &str, v: impl Serialize) -> Self {
        self.table.insert(key.into(), value(v));
        self
    }
}

/// A `[[routes]]` entry.
#[derive(Debug, Clone)]
pub struct Route(Table);

impl Route {
    /// A route to `upstream` (every host, every path unless narrowed).
    pub fn to(upstream: &str) -> Self {
        Self(Table::new()).set("upstream", upstream)
    }

    /// A route with nothing set yet.
    pub fn new() -> Self {
        Self(Table::new())
    }

    /// A route with no upstream (static files only): set `static` on it.
    pub fn files(root: impl fmt::Display) -> Self {
        Self(Table::new()).set("static", serde_json::json!({ "root": root.to_string() }))
    }

    /// `path = ...`.
    pub fn path(self, path: &str) -> Self {
        self.set("path", path)
    }

    /// `host = ...` (one host or several).
    pub fn host(self, hosts: impl Serialize) -> Self {
        self.set("host", hosts)
    }

    /// `name = ...`.
    pub fn name(self, name: &str) -> Self {
        self.set("name", name)
    }

    /// Any key.
    pub fn set(mut self, key: &str, v: impl Serialize) -> Self {
        self.0.insert(key.into(), value(v));
        self
    }
}
