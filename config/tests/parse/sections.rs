//! Sections beyond the basics: discovery and DNS, health checks, replay, ACME, edge features, compression, PROXY protocol.

use super::*;

#[test]
fn discovery_and_dns_settings() {
    let c = ok(r#"
[server]
region = "ams"
region_order = ["fra", "lhr"]

[dns]
servers = ["[fdaa::3]:53", "10.0.0.2"]
timeout = "1s"
attempts = 3
min_ttl = "2s"
max_ttl = "30s"
stale_for = "1m"
startup_wait = "3s"

[[listeners]]
address = "127.0.0.1:8080"

[upstreams.app]
discovery = { fly_app = "my-app", port = 8080 }

[upstreams.db]
discovery = [ { dns = "db.internal", port = 5432, region = "ams" }, { dns = "DB-replica.internal.", port = 5432 } ]
backends = ["127.0.0.1:5433"]

[[routes]]
upstream = "app"
[[routes]]
path = "/db"
upstream = "db"
"#);
    assert_eq!(c.server.region_order, vec!["fra", "lhr"]);
    assert!(c.server.routing_headers);
    assert_eq!(c.dns.servers.len(), 2);
    assert_eq!(c.dns.servers[1].to_string(), "10.0.0.2:53");
    assert_eq!(c.dns.attempts, 3);
    assert_eq!(c.dns.stale_for, Duration::from_secs(60));
    let app = c.upstream("app").unwrap();
    assert!(app.backends.is_empty());
    assert_eq!(
        app.discovery[0].source,
        DiscoverySource::Fly {
            app: "my-app".into()
        }
    );
    assert_eq!(app.discovery[0].port, 8080);
    let db = c.upstream("db").unwrap();
    assert_eq!(db.discovery.len(), 2);
    assert_eq!(
        db.discovery[1].source,
        DiscoverySource::Dns {
            name: "db-replica.internal".into(),
            region: None
        }
    );
    assert_eq!(db.discovery[0].to_string(), "dns:db.internal");
}

#[test]
fn discovery_problems() {
    let l = "[[listeners]]\naddress = \"127.0.0.1:1\"\n";
    one_err(
        &format!("{l}[upstreams.a]\ndiscovery = {{ dns = \"a.internal\" }}\n"),
        "missing `port`",
    );
    one_err(
        &format!("{l}[upstreams.a]\ndiscovery = {{ port = 80 }}\n"),
        "missing `dns`",
    );
    one_err(
        &format!("{l}[upstreams.a]\ndiscovery = {{ dns = \"a\", fly_app = \"b\", port = 80 }}\n"),
        "not both",
    );
    one_err(
        &format!("{l}[upstreams.a]\ndiscovery = {{ dns = \"bad name!\", port = 80 }}\n"),
        "not a valid DNS name",
    );
    one_err(
        &format!(
            "{l}[upstreams.a]\ndiscovery = {{ fly_app = \"a\", port = 80, region = \"iad\" }}\n"
        ),
        "only applies with `dns`",
    );
    one_err(&format!("{l}[upstreams.a]\ndiscovery = [{{ dns = \"a.b\", port = 80 }}, {{ dns = \"a.b\", port = 80 }}]\n"), "listed twice");
    one_err(
        &format!("{l}[upstreams.a]\nbalance = \"random\"\n"),
        "missing `backends` or `discovery`",
    );
    one_err(
        &format!("[dns]\nservers = [\"nope\"]\n{l}[upstreams.a]\nbackends = [\"127.0.0.1:2\"]\n"),
        "invalid name server",
    );
    one_err(&format!("[dns]\nmin_ttl = \"10s\"\nmax_ttl = \"5s\"\n{l}[upstreams.a]\nbackends = [\"127.0.0.1:2\"]\n"), "below min_ttl");
    one_err(
        &format!("[dns]\nmin_ttl = \"10ms\"\n{l}[upstreams.a]\nbackends = [\"127.0.0.1:2\"]\n"),
        "at least 100ms",
    );
    one_err(
        &format!(
            "[server]\nregion_order = [\"a b\"]\n{l}[upstreams.a]\nbackends = [\"127.0.0.1:2\"]\n"
        ),
        "invalid region",
    );
}

#[test]
fn health_checks_and_passive_ejection() {
    let c = ok(r#"
[[listeners]]
address = "127.0.0.1:8080"

[upstreams.app]
backends = ["127.0.0.1:3000"]
start_healthy = true
all_unhealthy = "refuse"
passive = { connect_failures = 5, http_5xx = 10, eject_for = "5s", max_eject_for = "1m" }

[[upstreams.app.checks]]
type = "http"
path = "/health"
method = "head"
interval = "5s"
timeout = "1s"
grace_period = "30s"
protocol = "https"
tls_server_name = "app.local"
tls_skip_verify = true
headers = { "X-Check" = "portico" }
rise = 1
fall = 2
expect_status = [200, "3xx"]

[[upstreams.app.checks]]
type = "tcp"
port = 9000
"#);
    let u = c.upstream("app").unwrap();
    assert!(u.start_healthy);
    assert_eq!(u.all_unhealthy, AllUnhealthy::Refuse);
    assert_eq!(u.passive.connect_failures, 5);
    assert_eq!(u.passive.http_5xx, 10);
    assert_eq!(u.checks.len(), 2);
    let h = &u.checks[0];
    assert_eq!(h.kind, CheckKind::Http);
    assert_eq!(h.method, "HEAD");
    assert!(h.https && h.tls_skip_verify);
    assert_eq!(h.grace_period, Duration::from_secs(30));
    assert!(h.expect_status[0].matches(200) && !h.expect_status[0].matches(204));
    assert!(h.expect_status[1].matches(302));
    let t = &u.checks[1];
    assert_eq!(t.kind, CheckKind::Tcp);
    assert_eq!(t.port, Some(9000));
    assert!(t.expect_status[0].matches(204), "defaults to any 2xx");
    let d = ok(MINIMAL);
    let u = d.upstream("app").unwrap();
    assert!(u.checks.is_empty());
    assert_eq!(u.all_unhealthy, AllUnhealthy::FailOpen);
    assert_eq!(u.passive.connect_failures, 3);
    assert_eq!(u.passive.http_5xx, 0);
}

#[test]
fn health_check_problems() {
    let base =
        "[[listeners]]\naddress = \"127.0.0.1:1\"\n[upstreams.a]\nbackends = [\"127.0.0.1:2\"]\n";
    one_err(
        &format!("{base}[[upstreams.a.checks]]\ntype = \"icmp\"\n"),
        "unknown check type",
    );
    one_err(
        &format!("{base}[[upstreams.a.checks]]\ntype = \"tcp\"\npath = \"/x\"\n"),
        "only applies to type = \"http\"",
    );
    one_err(
        &format!("{base}[[upstreams.a.checks]]\ntls_skip_verify = true\n"),
        "only applies with protocol = \"https\"",
    );
    one_err(
        &format!("{base}[[upstreams.a.checks]]\ninterval = \"10ms\"\n"),
        "at least 100ms",
    );
    one_err(
        &format!("{base}[[upstreams.a.checks]]\nexpect_status = [\"ok\"]\n"),
        "expected a status code",
    );
    one_err(
        &format!("{base}[[upstreams.a.checks]]\nrise = 0\n"),
        "out of range",
    );
    one_err(
        &format!("{base}[[upstreams.a.checks]]\npath = \"health\"\n"),
        "must start with '/'",
    );
    one_err(
        &format!("{base}[[upstreams.a.checks]]\nintervall = \"1s\"\n"),
        "unknown key (did you mean \"interval\"?)",
    );
    one_err(
        &format!("{base}all_unhealthy = \"panic\"\n"),
        "unknown value \"panic\"",
    );
    one_err(
        &format!("{base}passive = {{ eject_for = \"10s\", max_eject_for = \"1s\" }}\n"),
        "shorter than eject_for",
    );
}

#[test]
fn replay_and_write_routing() {
    let c = ok(r#"
[server]
region = "ams"
primary_region = "${PRIMARY:-iad}"

[replay]
max_body = "16MiB"
cache_size = 500

[[listeners]]
address = "127.0.0.1:8080"

[upstreams.app]
backends = ["127.0.0.1:3000"]
writes = "primary"

[upstreams.other]
backends = ["127.0.0.1:3001"]

[[routes]]
upstream = "app"
replay_cache = [ { cookie = "sid", ttl = "5m" }, { path = "/api", header = "X-Session" } ]

[[routes]]
path = "/reads"
upstream = "app"
writes = "any"

[[routes]]
path = "/o"
upstream = "other"
writes = "primary"
write_methods = ["post", "DELETE"]
"#);
    assert_eq!(c.server.primary_region.as_deref(), Some("iad"));
    assert_eq!(c.replay.max_body, 16 << 20);
    assert!(c.replay.enabled);
    assert_eq!(c.replay.cache_size, 500);
    let app = c.upstream("app").unwrap();
    assert!(app.writes.as_ref().unwrap().is_write("POST"));
    assert!(!app.writes.as_ref().unwrap().is_write("GET"));
    let routes = c.routes.routes();
    assert_eq!(routes[0].writes, None, "follows the upstream");
    assert_eq!(routes[0].replay_cache.len(), 2);
    assert_eq!(
        routes[0].replay_cache[0].key,
        SessionKey::Cookie("sid".into())
    );
    assert_eq!(routes[0].replay_cache[0].path, "/");
    assert_eq!(
        routes[0].replay_cache[1].key,
        SessionKey::Header("x-session".into())
    );
    assert_eq!(routes[0].replay_cache[1].ttl, Duration::from_secs(600));
    assert_eq!(routes[1].writes, Some(None), "writes = any turns it off");
    let w = routes[2].writes.clone().unwrap().unwrap();
    assert_eq!(w.methods, vec!["POST", "DELETE"]);
}

#[test]
fn replay_problems() {
    let l = "[[listeners]]\naddress = \"127.0.0.1:1\"\n";
    one_err(
        &format!("{l}[upstreams.a]\nbackends = [\"127.0.0.1:2\"]\nwrites = \"primary\"\n"),
        "needs [server] primary_region",
    );
    one_err(&format!("[server]\nprimary_region = \"iad\"\n{l}[upstreams.a]\nbackends = [\"127.0.0.1:2\"]\nwrites = \"leader\"\n"), "expected \"primary\" or \"any\"");
    one_err(
        &format!("{l}[upstreams.a]\nbackends = [\"127.0.0.1:2\"]\nwrite_methods = [\"POST\"]\n"),
        "only applies with writes",
    );
    one_err(
        &format!("[replay]\nmax_body = \"1GiB\"\n{l}[upstreams.a]\nbackends = [\"127.0.0.1:2\"]\n"),
        "above the limit of 64MiB",
    );
    one_err(&format!("{l}[upstreams.a]\nbackends = [\"127.0.0.1:2\"]\n[[routes]]\nupstream = \"a\"\nreplay_cache = [{{ ttl = \"1m\" }}]\n"), "missing `cookie` or `header`");
    one_err(&format!("{l}[upstreams.a]\nbackends = [\"127.0.0.1:2\"]\n[[routes]]\nupstream = \"a\"\nreplay_cache = [{{ cookie = \"a\", header = \"b\" }}]\n"), "not both");
}

#[test]
fn acme_blocks() {
    let base = "[upstreams.a]\nbackends=[\"127.0.0.1:2\"]\n";
    let tls = |acme: &str| {
        format!("[[listeners]]\naddress = \"127.0.0.1:1\"\ntls = {{ acme = {{ {acme} }} }}\n{base}")
    };
    let c = ok(&tls("hosts = [\"Example.COM.\", \"www.example.com\"], email = \"ops@example.com\", storage = \"/srv/acme\""));
    let a = c.listeners[0].tls.as_ref().unwrap().acme.as_ref().unwrap();
    assert_eq!(a.hosts, ["example.com", "www.example.com"]);
    assert_eq!(
        a.directory,
        "https://acme-v02.api.letsencrypt.org/directory"
    );
    assert_eq!(a.challenge, AcmeChallenge::TlsAlpn01);
    assert_eq!(a.storage, std::path::Path::new("/srv/acme"));
    assert!(c.listeners[0].tls.as_ref().unwrap().certificates.is_empty());
    let c = ok(&tls(
        "hosts = [\"a.example\"], directory = \"letsencrypt-staging\"",
    ));
    let a = c.listeners[0].tls.as_ref().unwrap().acme.as_ref().unwrap();
    assert!(a.directory.contains("staging"));

    let e = one_err(&tls("hosts = [\"*.example.com\"]"), "DNS-01");
    assert!(e.contains("listeners[0].tls.acme.hosts[0]"), "{e}");
    one_err(&tls("hosts = [\"10.0.0.1\"]"), "an IP address");
    one_err(&tls("hosts = [\"localhost\"]"), "single-label");
    one_err(
        &tls("hosts = [\"bad_name.example\"]"),
        "not a valid DNS host name",
    );
    one_err(
        &tls("hosts = [\"a.example\", \"A.example\"]"),
        "listed twice",
    );
    one_err(&tls("hosts = []"), "at least one host name");
    one_err(&tls("email = \"x@y.z\""), "hosts: missing");
    one_err(
        &tls("hosts = [\"a.example\"], directory = \"http://ca/dir\""),
        "not an ACME directory",
    );
    one_err(
        &tls("hosts = [\"a.example\"], challenge = \"dns-01\""),
        "unknown challenge",
    );
    one_err(
        &tls("hosts = [\"a.example\"], email = \"nobody\""),
        "not an email address",
    );
    one_err(
        &tls("hosts = [\"a.example\"], ca_roots = \"/nonexistent/ca.pem\""),
        "not a readable file",
    );
    one_err(
        &tls("hosts = [\"a.example\"], challenge = \"http-01\""),
        "plain-HTTP listener",
    );
    one_err(&tls("hosts = [\"a.example\"], staging = true"), "staging");
    // A TLS listener needs certificates from somewhere.
    one_err(
        &format!("[[listeners]]\naddress = \"127.0.0.1:1\"\ntls = {{ http2 = true }}\n{base}"),
        "or `acme`",
    );
}

#[test]
fn ip_rules_rate_limits_and_proxy_protocol() {
    let up = "[upstreams.a]\nbackends=[\"127.0.0.1:2\"]\n";
    let listener = |extra: &str| format!("[[listeners]]\naddress = \"127.0.0.1:1\"\n{extra}\n{up}");
    let route = |extra: &str| format!("{}[[routes]]\nupstream = \"a\"\n{extra}\n", listener(""));

    let c = ok(&route("allow = [\"10.0.0.0/8\", \"::1\"]\ndeny = [\"10.1.0.0/16\"]\nrate_limit = { requests = 100, per = \"1m\", key = \"cookie:session\" }"));
    let r = &c.routes.routes()[0];
    assert!(r.ip_rules.admits("10.2.3.4".parse().unwrap()));
    assert!(!r.ip_rules.admits("10.1.3.4".parse().unwrap()));
    assert!(!r.ip_rules.admits("192.0.2.1".parse().unwrap()));
    let rl = r.rate_limit.as_ref().unwrap();
    assert_eq!((rl.requests, rl.per.as_secs()), (100, 60));
    assert_eq!(rl.key, RateKey::Cookie("session".into()));

    one_err(&route("allow = [\"10.0.0.0/33\"]"), "routes[0].allow[0]");
    one_err(&route("rate_limit = { per = \"1m\" }"), "requests: missing");
    one_err(&route("rate_limit = { requests = 0 }"), "at least 1");
    one_err(
        &route("rate_limit = { requests = 5, per = \"2d\" }"),
        "between 1s and 24h",
    );
    one_err(
        &route("rate_limit = { requests = 5, key = \"query:x\" }"),
        "header:NAME",
    );
    one_err(
        &route("rate_limit = { requests = 5, max_clients = 0 }"),
        "max_clients",
    );

    let c = ok(&listener("proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/8\"]\nmax_connections_per_ip = 50\ndeny = [\"192.0.2.0/24\"]"));
    let l = &c.listeners[0];
    assert_eq!(l.proxy_protocol_from.len(), 1);
    assert_eq!(l.max_connections_per_ip, Some(50));
    assert!(!l.ip_rules.admits("192.0.2.9".parse().unwrap()));
    // trusted_proxies serve as the default sources.
    let c = ok(&format!(
        "[server]\ntrusted_proxies = [\"10.9.0.0/16\"]\n{}",
        listener("proxy_protocol = true")
    ));
    assert_eq!(c.listeners[0].proxy_protocol_from.len(), 1);
    one_err(
        &listener("proxy_protocol = true"),
        "needs the addresses of the load balancers",
    );
    one_err(
        &listener("proxy_protocol_from = [\"10.0.0.1\"]"),
        "set proxy_protocol = true",
    );
    one_err(
        &listener("max_connections_per_ip = 0"),
        "max_connections_per_ip",
    );
}

#[test]
fn http2_on_a_plain_upstream_is_h2c() {
    let c = ok("[[listeners]]\naddress = \"127.0.0.1:1\"\n[upstreams.g]\nbackends = [\"127.0.0.1:50051\"]\nhttp2 = true\n");
    assert!(c.upstreams[0].http2);
    assert!(c.upstreams[0].tls.is_none());
}

#[test]
fn compress_settings() {
    let base = "[[listeners]]\naddress = \"127.0.0.1:1\"\n[upstreams.a]\nbackends=[\"127.0.0.1:2\"]\n[[routes]]\nupstream = \"a\"\n";
    let c = ok(&format!("{base}compress = true\n"));
    let z = c.routes.routes()[0].compress.as_ref().unwrap();
    assert_eq!(
        (z.gzip_level, z.brotli_level, z.zstd_level, z.min_size),
        (4, 4, 3, 1024)
    );
    assert!(ok(&format!("{base}compress = false\n")).routes.routes()[0]
        .compress
        .is_none());
    let c = ok(&format!("{base}compress = {{ min_size = \"4KiB\", types = [\"text/*\", \"application/*+json\"], brotli = 0, zstd = 19 }}\n"));
    let z = c.routes.routes()[0].compress.as_ref().unwrap();
    assert_eq!((z.brotli_level, z.zstd_level, z.min_size), (0, 19, 4096));
    assert_eq!(z.types, ["text/*", "application/*+json"]);
    one_err(&format!("{base}compress = {{ gzip = 10 }}\n"), "above 9");
    one_err(
        &format!("{base}compress = {{ types = [\"html\"] }}\n"),
        "not a media type",
    );
    one_err(
        &format!("{base}compress = {{ gzip = 0, brotli = 0, zstd = 0 }}\n"),
        "every coding is off",
    );
    one_err(&format!("{base}compress = {{ level = 3 }}\n"), "level");
}

#[test]
fn send_proxy_protocol_versions() {
    let up = |v: &str| {
        format!("[[listeners]]\naddress = \"127.0.0.1:1\"\n[upstreams.a]\nbackends = [\"127.0.0.1:2\"]\nsend_proxy_protocol = \"{v}\"\n")
    };
    assert_eq!(
        ok(&up("v2")).upstreams[0].send_proxy_protocol,
        Some(ProxyProtocolVersion::V2)
    );
    one_err(&up("v3"), "expected \"v1\" or \"v2\"");
}

#[test]
fn upstream_tls_ca() {
    let l = "[[listeners]]\naddress = \"127.0.0.1:8080\"\n";
    let c = match parse(
        &format!(
            "{l}[upstreams.a]\nbackends = [\"10.0.0.1:443\"]\nprotocol = \"https\"\n\
             tls_server_name = \"api.internal\"\ntls_ca = \"certs/ca.pem\"\n\
             [[upstreams.a.checks]]\nprotocol = \"https\"\npath = \"/h\"\n"
        ),
        "/etc/portico/portico.toml",
        Some(std::path::Path::new("/etc/portico")),
        &env(),
    ) {
        Ok(l) => l.config,
        Err(e) => panic!("{e}"),
    };
    let tls = c.upstreams[0].tls.as_ref().unwrap();
    assert_eq!(
        tls.ca.as_deref(),
        Some(std::path::Path::new("/etc/portico/certs/ca.pem"))
    );
    // Checks trust and name what traffic does.
    let check = &c.upstreams[0].checks[0];
    assert_eq!(check.tls_ca, tls.ca);
    assert_eq!(check.tls_server_name.as_deref(), Some("api.internal"));

    let e = one_err(
        &format!("{l}[upstreams.a]\nbackends = [\"10.0.0.1:80\"]\ntls_ca = \"ca.pem\"\n"),
        "tls_ca",
    );
    assert!(e.contains("only applies with protocol = \"https\""), "{e}");
    let e = one_err(
        &format!(
            "{l}[upstreams.a]\nbackends = [\"10.0.0.1:443\"]\nprotocol = \"https\"\n\
             tls_ca = \"ca.pem\"\ntls_skip_verify = true\n"
        ),
        "tls_ca",
    );
    assert!(e.contains("contradict"), "{e}");
}
