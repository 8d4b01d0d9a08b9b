//! Tests of the doctor's checks against fake kernel trees and configs.

#![allow(clippy::unwrap_used)]
use super::*;

fn config(extra_listener: &str) -> Config {
    let text = format!(
        r#"
[[listeners]]
name = "web"
address = "127.0.0.1:80"
max_connections = 20000
{extra_listener}

[upstreams.app]
backends = ["10.0.0.5:3000"]

[[routes]]
upstream = "app"
"#
    );
    portico_config::parse(&text, "t.toml", None, &portico_config::ProcessEnv)
        .map(|l| l.config)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A fake `/proc/sys` with `values`.
fn tree(values: &[(&str, &str)]) -> (tempfile::TempDir, Sysctl) {
    let dir = tempfile::tempdir().unwrap();
    for (k, v) in values {
        let p = dir.path().join(k.replace('.', "/"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("{v}\n")).unwrap();
    }
    let s = Sysctl::new(dir.path());
    (dir, s)
}

fn status_of<'a>(f: &'a [Finding], check: &str) -> &'a Finding {
    f.iter()
        .find(|x| x.check == check)
        .unwrap_or_else(|| panic!("no finding {check} in {f:?}"))
}

#[test]
fn a_debian_default_host_is_told_what_to_raise() {
    let cfg = config("");
    let needs = Needs::of(&cfg);
    assert_eq!(needs.connections, 20_000);
    assert_eq!(needs.descriptors, 40_256);
    let (_d, sys) = tree(&[
        ("fs.file-max", "9223372036854775807"),
        ("fs.nr_open", "1048576"),
        ("net.core.somaxconn", "4096"),
        ("net.ipv4.tcp_max_syn_backlog", "512"),
        ("net.ipv4.ip_local_port_range", "32768\t60999"),
        ("net.ipv4.tcp_tw_reuse", "2"),
        ("net.ipv4.tcp_fastopen", "1"),
    ]);
    let f = kernel(&sys, &cfg, needs);
    assert_eq!(status_of(&f, "fs.file-max").status, Status::Ok);
    assert_eq!(status_of(&f, "fs.nr_open").status, Status::Ok);
    let s = status_of(&f, "net.core.somaxconn");
    assert_eq!(s.status, Status::Fix);
    assert!(s
        .fix
        .as_deref()
        .unwrap()
        .contains("sysctl -w net.core.somaxconn=65535"));
    let s = status_of(&f, "net.ipv4.tcp_max_syn_backlog");
    assert_eq!(s.status, Status::Fix);
    assert!(s.fix.as_deref().unwrap().contains("=4096"));
    // 28,232 ports cover the 20,000 connections.
    assert_eq!(
        status_of(&f, "net.ipv4.ip_local_port_range").status,
        Status::Ok
    );
    // The backend is off loopback, so loopback-only reuse is not enough.
    let s = status_of(&f, "net.ipv4.tcp_tw_reuse");
    assert_eq!(s.status, Status::Fix);
    assert!(s.detail.contains("loopback only"));
    // No listener asks for fast open: worth knowing, not a fix.
    assert_eq!(status_of(&f, "net.ipv4.tcp_fastopen").status, Status::Info);
    // No conntrack module loaded: no finding at all.
    assert!(f.iter().all(|x| !x.check.contains("conntrack")));
}

#[test]
fn a_tuned_host_needs_nothing() {
    let cfg = config("tcp_fastopen = 256");
    let (_d, sys) = tree(&[
        ("fs.file-max", "2000000"),
        ("fs.nr_open", "1048576"),
        ("net.core.somaxconn", "65535"),
        ("net.ipv4.tcp_max_syn_backlog", "8192"),
        ("net.ipv4.ip_local_port_range", "1024 65535"),
        ("net.ipv4.tcp_tw_reuse", "1"),
        ("net.ipv4.tcp_fastopen", "3"),
        ("net.netfilter.nf_conntrack_max", "262144"),
    ]);
    let f = kernel(&sys, &cfg, Needs::of(&cfg));
    assert!(f.iter().all(|x| x.status == Status::Ok), "{f:#?}");
    assert_eq!(f.len(), 8);
}

#[test]
fn the_shipped_sysctl_drop_in_satisfies_every_check() {
    // systemd/99-portico.conf, as `sysctl --system` would apply it, with the default config.
    let text = include_str!("../../../systemd/99-portico.conf");
    let values: Vec<(&str, &str)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.trim(), v.trim())
        })
        .collect();
    assert!(values.len() >= 7);
    let (_d, sys) = tree(&values);
    let cfg = config("tcp_fastopen = 256");
    let f = kernel(&sys, &cfg, Needs::of(&cfg));
    assert!(f.iter().all(|x| x.status == Status::Ok), "{f:#?}");
    assert_eq!(f.len(), values.len());
}

#[test]
fn small_tables_and_fast_open_off_are_found() {
    let cfg = config("tcp_fastopen = 256");
    let (_d, sys) = tree(&[
        ("fs.file-max", "10000"),
        ("fs.nr_open", "4096"),
        ("net.ipv4.ip_local_port_range", "60000 61000"),
        ("net.ipv4.tcp_fastopen", "1"),
        ("net.netfilter.nf_conntrack_max", "20000"),
        ("net.ipv4.tcp_tw_reuse", "0"),
    ]);
    let f = kernel(&sys, &cfg, Needs::of(&cfg));
    for k in [
        "fs.file-max",
        "fs.nr_open",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.tcp_fastopen",
        "net.netfilter.nf_conntrack_max",
        "net.ipv4.tcp_tw_reuse",
    ] {
        let s = status_of(&f, k);
        assert_eq!(s.status, Status::Fix, "{k}: {s:?}");
        assert!(s.fix.as_deref().unwrap().starts_with("sysctl -w "), "{s:?}");
    }
    assert!(status_of(&f, "net.ipv4.tcp_fastopen")
        .fix
        .as_deref()
        .unwrap()
        .contains("tcp_fastopen=3"));
}

#[test]
fn open_files_counts_two_per_connection() {
    let cfg = config("");
    let needs = Needs::of(&cfg);
    let f = open_files(1024, 1_048_576, None, needs);
    assert_eq!(f.status, Status::Ok, "the soft limit is raised at start");
    let f = open_files(1024, 4096, None, needs);
    assert_eq!(f.status, Status::Fix);
    assert!(f.fix.as_deref().unwrap().contains("LimitNOFILE=40256"));
    let f = open_files(1024, 1_048_576, Some(10_000), needs);
    assert_eq!(f.status, Status::Fix);
    assert!(f.fix.as_deref().unwrap().contains("max_open_files"));
}

#[test]
fn privileged_ports_need_a_capability() {
    let cfg = config("");
    let user = Privileges {
        root: false,
        net_bind_service: false,
        unprivileged_port_start: 1024,
    };
    let f = ports(&cfg, user);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].status, Status::Fix);
    assert!(f[0]
        .fix
        .as_deref()
        .unwrap()
        .contains("CAP_NET_BIND_SERVICE"));
    let capable = Privileges {
        net_bind_service: true,
        ..user
    };
    assert_eq!(ports(&cfg, capable)[0].status, Status::Ok);
    let lowered = Privileges {
        unprivileged_port_start: 80,
        ..user
    };
    assert!(ports(&cfg, lowered).is_empty());
}

#[test]
fn certificates_near_expiry_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["example.test".into()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(10);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("k.pem"), key.serialize_pem()).unwrap();
    let extra = format!(
        "tls = {{ certificates = [{{ cert = \"{0}/c.pem\", key = \"{0}/k.pem\" }}] }}",
        dir.path().display()
    );
    let cfg = config(&extra);
    let month = Duration::from_secs(30 * 86_400);
    let f = certificates(&cfg, SystemTime::now(), month);
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].status, Status::Fix, "{f:?}");
    assert!(
        f[0].detail.contains("expires in 9 day(s)") || f[0].detail.contains("expires in 10 day(s)"),
        "{f:?}"
    );
    let f = certificates(&cfg, SystemTime::now(), Duration::from_secs(86_400));
    assert_eq!(f[0].status, Status::Ok);
    let later = SystemTime::now() + Duration::from_secs(20 * 86_400);
    let f = certificates(&cfg, later, month);
    assert!(f[0].detail.starts_with("expired"), "{f:?}");
}

#[test]
fn acme_hosts_missing_stored_and_failing_renewal_are_reported() {
    let storage = tempfile::tempdir().unwrap();
    let extra = format!(
        "tls = {{ acme = {{ hosts = [\"a.example.test\", \"b.example.test\"], directory = \"https://ca.test/dir\", storage = \"{}\" }} }}",
        storage.path().display()
    );
    let cfg = config(&extra);
    // a: 90 days of life, 40 left: renewal due in 10 days.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["a.example.test".into()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(50);
    params.not_after = now + time::Duration::days(40);
    let cert = params.self_signed(&key).unwrap();
    let certs = storage.path().join("ca.test_dir").join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(
        certs.join("a.example.test.pem"),
        format!("{}{}", key.serialize_pem(), cert.pem()),
    )
    .unwrap();
    let f = acme_certificates(&cfg, SystemTime::now());
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!(f[0].status, Status::Ok, "{f:?}");
    assert_eq!(f[1].status, Status::Info, "{f:?}");
    assert!(f[1].detail.contains("none stored yet"), "{f:?}");
    // 22 days later the renewal is 12 days overdue (window 30 days, a third is 10).
    let later = SystemTime::now() + Duration::from_secs(22 * 86_400);
    let f = acme_certificates(&cfg, later);
    assert_eq!(f[0].status, Status::Fix, "{f:?}");
    assert!(f[0].detail.contains("renewal is not succeeding"), "{f:?}");
    let much_later = SystemTime::now() + Duration::from_secs(41 * 86_400);
    assert!(acme_certificates(&cfg, much_later)[0]
        .detail
        .starts_with("expired"));
    // Storage that cannot be created (under a file; root may write anywhere else).
    let file = storage.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let cfg = config(&extra.replace(
        &storage.path().display().to_string(),
        &file.join("acme").display().to_string(),
    ));
    let f = acme_certificates(&cfg, SystemTime::now());
    assert!(
        f.iter()
            .any(|f| f.check.starts_with("acme storage") && f.status == Status::Fix),
        "{f:?}"
    );
}
