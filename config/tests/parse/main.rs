//! End-to-end tests of loading: valid documents become the expected model, and every kind of
//! mistake is reported with file, line, column, key path and reason.
#![allow(clippy::unwrap_used)]

mod sections;

use std::collections::HashMap;
use std::time::Duration;

use portico_config::*;

fn env() -> HashMap<&'static str, &'static str> {
    HashMap::from([("PORT", "9000"), ("FLY_REGION", "ams"), ("THREADS", "3")])
}

fn ok(text: &str) -> Config {
    match parse(text, "t.toml", None, &env()) {
        Ok(l) => l.config,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn errs(text: &str) -> Vec<String> {
    match parse(text, "t.toml", None, &env()) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.errors().iter().map(|e| e.to_string()).collect(),
    }
}

/// Asserts that exactly one error mentions `needle`, and returns it.
fn one_err(text: &str, needle: &str) -> String {
    let all = errs(text);
    let hits: Vec<&String> = all.iter().filter(|e| e.contains(needle)).collect();
    assert_eq!(
        hits.len(),
        1,
        "expected one error containing {needle:?}, got {all:#?}"
    );
    hits[0].clone()
}

const MINIMAL: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"

[upstreams.app]
backends = ["127.0.0.1:3000"]
"#;

#[test]
fn minimal_config_gets_defaults_and_an_implicit_route() {
    let c = ok(MINIMAL);
    assert_eq!(c.server.name, "portico");
    assert_eq!(c.server.region, "local");
    assert_eq!(c.server.shutdown_timeout, Duration::from_secs(30));
    assert!(c.server.threads >= 1);
    let l = &c.listeners[0];
    assert_eq!(l.address.to_string(), "127.0.0.1:8080");
    assert_eq!(l.name, "127.0.0.1:8080");
    assert_eq!(l.max_header_size, 32 * 1024);
    assert_eq!(l.header_read_timeout, Duration::from_secs(10));
    assert_eq!(
        c.admin.as_ref().unwrap().address.to_string(),
        "127.0.0.1:9901"
    );
    let u = &c.upstreams[0];
    assert_eq!(u.balance, Balance::LeastRequests);
    assert_eq!(u.retries, 2);
    assert_eq!(u.concurrency.hard_limit, u32::MAX);
    assert_eq!(c.routes.routes().len(), 1);
    assert_eq!(
        c.routes.find(Some("anything"), "/x").unwrap().1.name,
        "default"
    );
}

#[test]
fn full_config_round_trips_into_the_model() {
    let c = ok(r#"
[server]
name = "edge-1"
region = "${FLY_REGION:-local}"
threads = "${THREADS}"
work_stealing = false
shutdown_timeout = "45s"
log_format = "json"
trusted_proxies = ["10.0.0.0/8", "192.168.1.1"]
fly_headers = true

[[listeners]]
name = "http"
address = "0.0.0.0:${PORT}"
force_https = true
max_connections = 500
header_read_timeout = "5s"
keepalive_timeout = "30s"
max_header_size = "16KiB"

[[listeners]]
name = "https"
address = "[::]:8443"
tls = { certificates = [ { cert = "a.pem", key = "a.key" }, { cert = "b.pem", key = "b.key" } ] }

[admin]
address = "127.0.0.1:9999"

[upstreams.app]
backends = ["127.0.0.1:3000", { address = "127.0.0.1:3001", id = "b", region = "ams", weight = 3 }]
balance = "consistent_hash"
hash_on = "header:X-User"
concurrency = { type = "requests", soft_limit = 20, hard_limit = 25 }
connect_timeout = "2s"
read_timeout = "1m"
queue_timeout = "500ms"

[upstreams.api]
backends = ["api.internal:8080"]
protocol = "https"
tls_skip_verify = true

[[routes]]
host = "example.com"
path = "/"
upstream = "app"
response_headers = { set = { "Strict-Transport-Security" = "max-age=63072000" }, remove = ["Server"] }

[[routes]]
name = "api"
host = ["example.com", "*.example.com"]
path = "/api"
upstream = "api"
max_body = "10MiB"
strip_prefix = true
"#);
    assert_eq!(c.server.name, "edge-1");
    assert_eq!(c.server.region, "ams");
    assert_eq!(c.server.threads, 3);
    assert!(!c.server.work_stealing);
    assert_eq!(c.server.log_format, LogFormat::Json);
    assert_eq!(c.server.trusted_proxies.len(), 2);
    assert!(c.server.fly_headers);
    assert_eq!(c.listeners[0].address.port(), 9000);
    assert!(c.listeners[0].force_https);
    assert_eq!(
        c.listeners[0].https_port, None,
        "decided at runtime from the TLS listener's bound port"
    );
    assert_eq!(c.listeners[0].max_header_size, 16 * 1024);
    let tls = c.listeners[1].tls.as_ref().unwrap();
    assert_eq!(tls.certificates.len(), 2);
    assert!(tls.http2);
    let app = c.upstream("app").unwrap();
    assert_eq!(app.balance, Balance::ConsistentHash);
    assert_eq!(app.hash_on, Some(HashKey::Header("x-user".into())));
    assert_eq!(app.concurrency.soft_limit, 20);
    assert_eq!(app.backends[1].weight, 3);
    assert_eq!(app.backends[1].region.as_deref(), Some("ams"));
    assert_eq!(app.read_timeout, Duration::from_secs(60));
    let api = c.upstream("api").unwrap();
    assert_eq!(api.tls.as_ref().unwrap().server_name, "api.internal");
    let (_, r) = c.routes.find(Some("x.example.com"), "/api/v1").unwrap();
    assert_eq!(r.name, "api");
    assert_eq!(r.max_body, Some(10 << 20));
    let (_, r) = c.routes.find(Some("example.com"), "/").unwrap();
    assert_eq!(r.name, "example.com/");
    assert_eq!(r.response_headers.set[0].0, "strict-transport-security");
}

#[test]
fn relative_certificate_paths_resolve_against_the_config_directory() {
    let text = r#"
[[listeners]]
address = "127.0.0.1:8443"
tls = { cert = "certs/a.pem", key = "/abs/a.key" }
[upstreams.app]
backends = ["127.0.0.1:3000"]
"#;
    let l = parse(
        text,
        "/etc/portico/portico.toml",
        Some(std::path::Path::new("/etc/portico")),
        &env(),
    )
    .unwrap();
    let c = &l.config.listeners[0].tls.as_ref().unwrap().certificates[0];
    assert_eq!(c.cert, std::path::Path::new("/etc/portico/certs/a.pem"));
    assert_eq!(c.key, std::path::Path::new("/abs/a.key"));
}

#[test]
fn unknown_upstream_in_route_is_located_and_suggested() {
    let e = one_err(
        r#"[[listeners]]
address = "127.0.0.1:8080"

[upstreams.app]
backends = ["127.0.0.1:3000"]

[[routes]]
path = "/"
upstream = "app"

[[routes]]
path = "/a"
upstream = "app"

[[routes]]
path = "/b"
upstream = "ap"
"#,
        "no upstream",
    );
    assert_eq!(
        e,
        "t.toml:17:12: routes[2].upstream: no upstream named \"ap\" (did you mean \"app\"?)"
    );
}

#[test]
fn typo_in_key_is_an_error_with_a_suggestion() {
    let e = one_err(&format!("{MINIMAL}balanc = \"random\"\n"), "unknown key");
    assert!(
        e.starts_with("t.toml:7:1: upstreams.app.balanc: unknown key (did you mean \"balance\"?)"),
        "{e}"
    );
}

#[test]
fn typo_in_section_name() {
    let e = one_err(
        &format!("{MINIMAL}[sever]\nthreads = 2\n"),
        "unknown section",
    );
    assert!(
        e.contains("t.toml:7:2: sever: unknown section `sever` (did you mean \"server\"?)"),
        "{e}"
    );
    let e = one_err(
        &format!("{MINIMAL}[replai]\nenabled = false\n"),
        "unknown section",
    );
    assert!(e.contains("(did you mean \"replay\"?)"), "{e}");
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let all = errs(
        r#"
[server]
threads = 0
log_format = "yaml"

[[listeners]]
address = "nope"

[[listeners]]
address = "127.0.0.1:8080"
max_header_size = "1GiB"

[upstreams.app]
backends = ["127.0.0.1:3000", "127.0.0.1:3000"]
balance = "fastest"

[upstreams.web]
backends = []
concurrency = { soft_limit = 10, hard_limit = 5 }

[[routes]]
upstream = "app"
path = "api"

[[routes]]
upstream = "nope"
"#,
    );
    let expect = [
        "server.threads: 0 is out of range",
        "server.log_format: unknown log format \"yaml\"",
        "listeners[0].address: invalid address \"nope\"",
        "listeners[1].max_header_size",
        "upstreams.app.backends[1]: 127.0.0.1:3000 is listed twice",
        "upstreams.app.balance: unknown balance \"fastest\"",
        "upstreams.web.backends: at least one backend is needed",
        "upstreams.web.concurrency.soft_limit: soft_limit (10) is above hard_limit (5)",
        "routes[0].path: path \"api\" must start with '/'",
        "routes[1].upstream: no upstream named \"nope\"",
    ];
    for want in expect {
        assert!(
            all.iter().any(|e| e.contains(want)),
            "missing {want:?} in {all:#?}"
        );
    }
    // Every error carries a line and column.
    for e in &all {
        let mut parts = e.splitn(4, ':');
        assert_eq!(parts.next(), Some("t.toml"));
        assert!(
            parts.next().unwrap().parse::<usize>().is_ok(),
            "no line in {e}"
        );
        assert!(
            parts.next().unwrap().parse::<usize>().is_ok(),
            "no column in {e}"
        );
    }
}

#[test]
fn several_bad_keys_in_one_section_are_all_reported() {
    let all = errs(
        r#"[[listeners]]
address = 8080
naem = "x"
max_connections = "lots"
[upstreams.app]
backends = ["nohost"]
balanse = "random"
retries = "two"
"#,
    );
    for want in [
        "t.toml:2:11: listeners[0].address: invalid type: integer `8080`, expected a string",
        "t.toml:3:1: listeners[0].naem: unknown key (did you mean \"name\"?)",
        "t.toml:4:19: listeners[0].max_connections: expected a whole number, found \"lots\"",
        "t.toml:6:13: upstreams.app.backends[0]: invalid backend address \"nohost\"",
        "t.toml:7:1: upstreams.app.balanse: unknown key",
        "t.toml:8:11: upstreams.app.retries: expected a whole number, found \"two\"",
    ] {
        assert!(
            all.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {all:#?}"
        );
    }
    // The dropped `address` is not reported a second time as missing.
    assert!(
        !all.iter().any(|e| e.contains("missing `address`")),
        "{all:#?}"
    );
}

#[test]
fn type_errors_name_the_key() {
    let e = one_err(&format!("{MINIMAL}retries = \"many\"\n"), "retries");
    assert!(
        e.contains("t.toml:7:11: upstreams.app.retries: expected a whole number, found \"many\""),
        "{e}"
    );
    let e = one_err(
        "[server]\nshutdown_timeout = 30\n[[listeners]]\naddress = \"127.0.0.1:1\"\n[upstreams.a]\nbackends=[\"127.0.0.1:2\"]\n",
        "shutdown_timeout",
    );
    assert!(
        e.contains("t.toml:2:20: server.shutdown_timeout: a bare number is ambiguous"),
        "{e}"
    );
    let e = one_err(
        "[server]\nshutdown_timeout = \"30 seconds\"\n[[listeners]]\naddress = \"127.0.0.1:1\"\n[upstreams.a]\nbackends=[\"127.0.0.1:2\"]\n",
        "shutdown_timeout",
    );
    assert!(e.contains("invalid duration \"30 seconds\""), "{e}");
}

#[test]
fn syntax_errors_are_located() {
    let all = errs("[[listeners]]\naddress = \"127.0.0.1:8080\n");
    assert!(all[0].starts_with("t.toml:2:"), "{all:?}");
}

#[test]
fn unset_environment_variable_is_an_error_at_its_value() {
    let e = one_err(
        "[[listeners]]\naddress = \"0.0.0.0:${NOT_SET}\"\n[upstreams.a]\nbackends=[\"127.0.0.1:2\"]\n",
        "NOT_SET",
    );
    assert!(
        e.starts_with("t.toml:2:11: listeners[0].address: environment variable NOT_SET is not set"),
        "{e}"
    );
}

#[test]
fn missing_pieces() {
    one_err(
        "[upstreams.a]\nbackends=[\"127.0.0.1:2\"]\n",
        "no listeners",
    );
    one_err("[[listeners]]\naddress = \"127.0.0.1:1\"\n", "no upstreams");
    one_err(
        "[[listeners]]\nname = \"x\"\n[upstreams.a]\nbackends=[\"127.0.0.1:2\"]\n",
        "missing `address`",
    );
    one_err(
        "[[listeners]]\naddress = \"127.0.0.1:1\"\n[upstreams.a]\nbalance = \"random\"\n",
        "missing `backends`",
    );
    one_err(
        "[[listeners]]\naddress = \"127.0.0.1:1\"\n[upstreams.a]\nbackends=[\"127.0.0.1:2\"]\n[upstreams.b]\nbackends=[\"127.0.0.1:3\"]\n",
        "several upstreams and no routes",
    );
    one_err(
        &format!("{MINIMAL}[[routes]]\npath = \"/\"\n"),
        "missing `upstream`",
    );
}

#[test]
fn listener_problems() {
    let base = "[upstreams.a]\nbackends=[\"127.0.0.1:2\"]\n";
    one_err(&format!("[[listeners]]\naddress = \"127.0.0.1:1\"\n[[listeners]]\naddress = \"127.0.0.1:1\"\n{base}"), "already used by listeners[0]");
    one_err(
        &format!("[[listeners]]\naddress = \"127.0.0.1:1\"\ntls = {{ cert = \"a\" }}\n{base}"),
        "`key` is missing",
    );
    one_err(&format!("[[listeners]]\naddress = \"127.0.0.1:1\"\ntls = {{ cert = \"a\", key = \"b\", certificates = [] }}\n{base}"), "not both");
    one_err(&format!("[[listeners]]\naddress = \"127.0.0.1:1\"\nforce_https = true\ntls = {{ cert = \"a\", key = \"b\" }}\n{base}"), "cannot be set on a TLS listener");
    one_err(&format!("[[listeners]]\naddress = \"127.0.0.1:1\"\ntls = {{ cert = \"a\", key = \"b\", min_version = \"1.1\" }}\n{base}"), "unsupported TLS version");
    one_err(
        &format!("[[listeners]]\naddress = \"127.0.0.1:1\"\nmax_connections = 0\n{base}"),
        "max_connections: must be at least 1",
    );
    one_err(
        &format!("[[listeners]]\naddress = \"127.0.0.1:1\"\nheader_read_timeout = \"0s\"\n{base}"),
        "greater than zero",
    );
    one_err(
        &format!("[[listeners]]\naddress = \"127.0.0.1:9901\"\n{base}"),
        "admin.address: 127.0.0.1:9901 is already used",
    );
    one_err(
        &format!("[[listeners]]\naddress = \"example.com:80\"\n{base}"),
        "invalid address",
    );
}

#[test]
fn upstream_problems() {
    let l = "[[listeners]]\naddress = \"127.0.0.1:1\"\n";
    one_err(
        &format!("{l}[upstreams.a]\nbackends=[\"nohost\"]\n"),
        "invalid backend address",
    );
    one_err(
        &format!("{l}[upstreams.a]\nbackends=[{{ address = \"127.0.0.1:2\", wieght = 2 }}]\n"),
        "unknown key (did you mean \"weight\"?)",
    );
    one_err(&format!("{l}[upstreams.a]\nbackends=[{{ address = \"127.0.0.1:2\", id = \"x\" }}, {{ address = \"127.0.0.1:3\", id = \"x\" }}]\n"), "used twice");
    one_err(
        &format!("{l}[upstreams.a]\nbackends=[\"127.0.0.1:2\"]\nhash_on = \"client_ip\"\n"),
        "only applies with balance",
    );
    one_err(&format!("{l}[upstreams.a]\nbackends=[\"127.0.0.1:2\"]\nbalance=\"consistent_hash\"\nhash_on = \"query:\"\n"), "invalid hash_on");
    one_err(
        &format!("{l}[upstreams.a]\nbackends=[\"127.0.0.1:2\"]\ntls_skip_verify = true\n"),
        "only applies with protocol = \"https\"",
    );
    one_err(
        &format!("{l}[upstreams.a]\nbackends=[\"127.0.0.1:2\"]\nprotocol = \"grpc\"\n"),
        "unknown protocol",
    );
    one_err(
        &format!(
            "{l}[upstreams.a]\nbackends=[\"127.0.0.1:2\"]\nconcurrency = {{ type = \"bytes\" }}\n"
        ),
        "unknown concurrency type",
    );
    one_err(
        &format!("{l}[upstreams.a]\nbackends=[\"127.0.0.1:2\"]\nretries = 99\n"),
        "out of range (0 to 16)",
    );
    one_err(
        &format!("{l}[upstreams.\"a b\"]\nbackends=[\"127.0.0.1:2\"]\n"),
        "may only hold letters",
    );
    one_err(
        &format!("upstreams = 5\n{l}"),
        "expected tables named [upstreams.NAME]",
    );
}

#[test]
fn route_problems() {
    let base = MINIMAL;
    one_err(
        &format!("{base}[[routes]]\nupstream = \"app\"\nhost = \"https://a.com\"\n"),
        "not a URL",
    );
    one_err(
        &format!("{base}[[routes]]\nupstream = \"app\"\nhost = \"a.com:80\"\n"),
        "not a valid host name",
    );
    one_err(
        &format!("{base}[[routes]]\nupstream = \"app\"\nhost = \"a.*.com\"\n"),
        "wildcard is only allowed",
    );
    one_err(
        &format!("{base}[[routes]]\nupstream = \"app\"\npath = \"/a/../b\"\n"),
        "not normalized",
    );
    one_err(
        &format!("{base}[[routes]]\nupstream = \"app\"\npath = \"/a?x=1\"\n"),
        "no query",
    );
    one_err(
        &format!("{base}[[routes]]\nupstream = \"app\"\n[[routes]]\nupstream = \"app\"\n"),
        "already routed by routes[0]",
    );
    one_err(&format!("{base}[[routes]]\nupstream = \"app\"\nname = \"x\"\n[[routes]]\nupstream = \"app\"\npath=\"/y\"\nname = \"x\"\n"), "used twice");
    one_err(
        &format!("{base}[[routes]]\nupstream = \"app\"\nstrip_prefix = true\n"),
        "strip_prefix needs a path",
    );
    one_err(&format!("{base}[[routes]]\nupstream = \"app\"\nresponse_headers = {{ set = {{ \"Bad Name\" = \"x\" }} }}\n"), "not a valid header name");
    one_err(&format!("{base}[[routes]]\nupstream = \"app\"\nresponse_headers = {{ set = {{ \"X-A\" = \"a\\nb\" }} }}\n"), "control characters");
    one_err(
        &format!("routes = {{ upstream = \"app\" }}\n{base}"),
        "expected an array of tables",
    );
    let sticky = |s: &str| format!("{base}[[routes]]\nupstream = \"app\"\nsticky = {s}\n");
    one_err(&sticky("{ mode = \"sticky\" }"), "unknown mode \"sticky\"");
    one_err(&sticky("{ mode = \"header\" }"), "needs `name`");
    one_err(
        &sticky("{ mode = \"header\", name = \"a b\" }"),
        "invalid header name",
    );
    one_err(
        &sticky("{ mode = \"client_ip\", max_age = \"1h\" }"),
        "only applies with mode = \"cookie\"",
    );
    one_err(&sticky("{ key = \"short\" }"), "signing key too short");
    one_err(&sticky("{ same_site = \"sometimes\" }"), "expected \"lax\"");
    one_err(&sticky("{ mod = \"cookie\" }"), "mode");
    // One cookie name cannot pin clients to two upstreams.
    one_err(
        &format!(
            "{base}[upstreams.api]\nbackends = [\"127.0.0.1:2\"]\n[[routes]]\nupstream = \"app\"\nsticky = {{ name = \"pin\" }}\n[[routes]]\npath = \"/api\"\nupstream = \"api\"\nsticky = {{ name = \"pin\" }}\n"
        ),
        "routes to different upstreams need different cookie names",
    );
    one_err(
        &format!("{base}[[routes]]\nupstream = \"app\"\nmax_websockets = 0\n"),
        "at least 1",
    );
    let stat = |s: &str| format!("{base}[[routes]]\nstatic = {s}\n");
    one_err(
        &stat("{ index = \"index.html\" }"),
        "missing: the directory",
    );
    one_err(&stat("{ root = \"dist\" }"), "must be an absolute path");
    one_err(
        &stat("{ root = \"/srv\", try_files = true }"),
        "set `upstream`",
    );
    one_err(
        &stat("{ root = \"/srv\", fallback = \"../x.html\" }"),
        "must be a file name inside root",
    );
    one_err(
        &stat("{ root = \"/srv\", fallback = \"index.html\", fallback_for = \"dots\" }"),
        "is not one of \"extensionless\", \"all\"",
    );
    one_err(
        &stat("{ root = \"/srv\", fallback_for = \"all\" }"),
        "only applies with `fallback`",
    );
    one_err(
        &stat("{ root = \"/srv\", immutable_paths = [\"assets\"] }"),
        "must start with '/'",
    );
    one_err(&stat("{ root = \"/srv\", listing = true }"), "listing");
    let files_only =
        ok("[[listeners]]\naddress = \"127.0.0.1:1\"\n[[routes]]\nstatic = { root = \"/srv\" }\n");
    assert!(files_only.upstreams.is_empty() && !files_only.routes.routes()[0].proxies());
    one_err(
        "[[listeners]]\naddress = \"127.0.0.1:1\"\n[[routes]]\npath = \"/\"\nstatic = { root = \"/srv\" }\n[[routes]]\npath = \"/api\"\nupstream = \"api\"\n",
        "no upstream named",
    );
    let c = ok(&stat("{ root = \"/srv/app\" }"));
    let sf = c.routes.routes()[0].static_files.clone().unwrap();
    assert_eq!(sf.index.as_deref(), Some("index.html"));
    assert_eq!(sf.cache_control, "no-cache");
    assert!(sf.hashed_names && sf.precompressed && !sf.compress && !sf.try_files);
}

#[test]
fn sticky_routes() {
    let c = ok(&format!(
        "{MINIMAL}[[routes]]\nupstream = \"app\"\nsticky = {{ key = \"0123456789abcdef\", max_age = \"1h\", same_site = \"strict\" }}\nmax_websockets = 10\nws_idle_timeout = \"5m\"\n[[routes]]\npath = \"/q\"\nupstream = \"app\"\nsticky = {{ mode = \"query\", name = \"sid\" }}\n"
    ));
    let r = &c.routes.routes();
    let cookie = r.iter().find(|r| r.path == "/").unwrap();
    match &cookie.sticky {
        Some(Sticky::Cookie(k)) => {
            assert_eq!(k.name, "portico_affinity_app");
            assert_eq!(k.max_age, Some(Duration::from_secs(3600)));
            assert_eq!(k.same_site.as_deref(), Some("Strict"));
            assert!(k.http_only);
            assert_eq!(k.secure, None);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(cookie.max_websockets, Some(10));
    assert_eq!(cookie.ws_idle_timeout, Some(Duration::from_secs(300)));
    let q = r.iter().find(|r| r.path == "/q").unwrap();
    assert_eq!(q.sticky, Some(Sticky::Hash(HashKey::Query("sid".into()))));
    assert_eq!(q.ws_idle_timeout, None);
}

#[test]
fn server_problems() {
    let tail = &MINIMAL[1..];
    one_err(&format!("[server]\nname = \"a b\"\n{tail}"), "single token");
    one_err(
        &format!("[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n{tail}"),
        "invalid address or CIDR",
    );
    one_err(
        &format!("[server]\nlog_level = \"loud\"\n{tail}"),
        "invalid log level",
    );
    one_err(
        &format!("[server]\nrequest_id_header = \"x id\"\n{tail}"),
        "not a valid header name",
    );
    one_err(&format!("[server]\nmax_open_files = 10\n{tail}"), "too low");
}

#[test]
fn embedded_default_is_valid_and_follows_the_environment() {
    let c = embedded(&HashMap::<&str, &str>::new()).unwrap().config;
    assert_eq!(c.listeners[0].address.to_string(), "127.0.0.1:8080");
    assert_eq!(c.admin.unwrap().address.to_string(), "127.0.0.1:9901");
    assert_eq!(
        c.upstreams[0].backends[0].address.to_string(),
        "127.0.0.1:3000"
    );
    let c = embedded(&HashMap::from([
        ("PORTICO_UPSTREAM", "10.1.2.3:4000"),
        ("PORTICO_LISTEN", "0.0.0.0:80"),
    ]))
    .unwrap()
    .config;
    assert_eq!(
        c.upstreams[0].backends[0].address.to_string(),
        "10.1.2.3:4000"
    );
    assert_eq!(c.listeners[0].address.to_string(), "0.0.0.0:80");
}

#[test]
fn admin_can_be_disabled() {
    let c = ok(&format!("{MINIMAL}[admin]\nenabled = false\n"));
    assert!(c.admin.is_none());
}

#[test]
fn unreadable_file_is_a_clear_error() {
    let e = load(std::path::Path::new("/nonexistent/portico.toml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/portico.toml: cannot read the config file"),
        "{e}"
    );
}
