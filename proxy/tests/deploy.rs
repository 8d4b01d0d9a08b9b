//! The deployment files run as written: the command lines in the Dockerfile, the compose
//! example and the systemd unit are read from those files and run against the built binary
//! (paths inside the image mapped to this checkout, addresses to loopback ports). No Docker
//! engine or systemd is needed; `scripts/check-deploy` validates the files' syntax.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::dns::TestDns;
use common::*;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

fn read(p: &str) -> String {
    std::fs::read_to_string(repo(p)).unwrap()
}

/// The JSON exec-form array on the first line of `text` containing `marker`
/// (`CMD ["run"]`, `test: ["CMD", ...]`).
fn exec_form(text: &str, marker: &str) -> Vec<String> {
    let line = text
        .lines()
        .find(|l| l.contains(marker) && l.contains('['))
        .unwrap_or_else(|| panic!("no line with {marker:?} and an exec-form array"));
    let json = &line[line.find('[').unwrap()..=line.rfind(']').unwrap()];
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

/// The value of `key=` on a unit file line.
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
        .to_string()
}

/// Arguments after the binary, the binary's in-image path checked.
fn args_of(cmd: &[String]) -> Vec<String> {
    assert_eq!(cmd[0], "/usr/local/bin/portico", "{cmd:?}");
    cmd[1..].to_vec()
}

fn free_port() -> u16 {
    reserved_port()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dockerfile_entrypoint_serves_and_its_healthcheck_tells() {
    let docker = read("Dockerfile");
    // The image runs the embedded default, opened to the network by PORTICO_LISTEN.
    assert!(docker.contains("PORTICO_LISTEN=0.0.0.0:8080"));
    assert!(docker.contains("USER nonroot"));
    assert!(docker.contains("STOPSIGNAL SIGTERM"));
    let mut run = args_of(&exec_form(&docker, "ENTRYPOINT"));
    run.extend(exec_form(&docker, "CMD [\"run"));
    let health = args_of(&exec_form(
        &docker,
        "CMD [\"/usr/local/bin/portico\", \"healthcheck",
    ));
    assert_eq!(run, ["run"]);

    let origin = Origin::named("app").await;
    let admin = format!("127.0.0.1:{}", free_port());
    let upstream = origin.addr.to_string();
    let env = [
        ("PORTICO_LISTEN", "127.0.0.1:0"),
        ("PORTICO_ADMIN", admin.as_str()),
        ("PORTICO_UPSTREAM", upstream.as_str()),
    ];
    let mut p = Portico::start_args(&strs(&run), &env);
    assert!(p.stderr_text().contains("config_from=\"embedded default\""));
    let r = client().get(p.url("http", "/")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "app");

    let (code, out, err) = run_cli(&strs(&health), &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("healthy"), "{out}");
    p.stop();
    let (code, _, err) = run_cli(&strs(&health), &env);
    assert_eq!(code, 1, "a stopped Portico is unhealthy: {err}");
    assert!(err.contains("portico healthcheck:"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_example_config_serves_replicas_files_and_sticky_routes() {
    let compose = read("examples/compose/compose.yaml");
    let health = exec_form(&compose, "test:");
    assert_eq!(health[0], "CMD");
    let health = args_of(&health[1..]);
    assert!(compose.contains("- ./portico:/etc/portico:ro"));
    assert!(compose.contains("- ./public:/srv/public:ro"));
    let key = compose
        .lines()
        .find_map(|l| l.trim().strip_prefix("STICKY_KEY:"))
        .unwrap()
        .trim()
        .trim_matches('"')
        .to_string();
    // stop_grace_period must outlast shutdown_timeout.
    assert!(compose.contains("stop_grace_period: 40s"));
    let cfg = read("examples/compose/portico/portico.toml");
    assert!(cfg.contains("shutdown_timeout = \"30s\""));

    // Two replicas behind the compose service name, answered by a real DNS server.
    let (a, b) = (Origin::named("a").await, Origin::named("b").await);
    let port = a.addr.port();
    // Replicas share one port in compose (one address each): b moves to 127.0.0.2, a's port.
    drop(b);
    let b = Origin::start_on(&format!("127.0.0.2:{port}"), "b", |_s| {
        Box::pin(async { text(200, "b", &[("x-origin", "b")]) })
    })
    .await;
    let dns = TestDns::start().await;
    dns.set_ips("app", &[a.addr.ip(), b.addr.ip()], 2);
    let admin_port = free_port();
    let test_cfg = cfg
        .replace("address = \"0.0.0.0:8080\"", "address = \"127.0.0.1:0\"")
        .replace(
            "address = \"127.0.0.1:9901\"",
            &format!("address = \"127.0.0.1:{admin_port}\""),
        )
        .replace("port = 8000", &format!("port = {port}"))
        .replace(
            "root = \"/srv/public\"",
            &format!("root = \"{}\"", repo("examples/compose/public").display()),
        )
        .replace("[dns]\n", &format!("[dns]\nservers = [\"{}\"]\n", dns.addr));
    assert_ne!(test_cfg, cfg);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.toml");
    std::fs::write(&path, &test_cfg).unwrap();
    let env = [("STICKY_KEY", key.as_str())];
    let path_s = path.to_str().unwrap();
    let (code, out, err) = run_cli(&["check", "-c", path_s], &env);
    assert_eq!(code, 0, "{out}{err}");
    let mut p = Portico::start_path(&path, &env);

    // Both replicas found and passing their checks.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let st = status(&p).await;
        let healthy = st["upstreams"][0]["backends"]
            .as_array()
            .map(|bs| {
                bs.iter()
                    .filter(|b| b.to_string().contains("\"verdict\":\"up\""))
                    .count()
            })
            .unwrap_or(0);
        if healthy == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{st:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Replicas both take traffic.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        let r = client().get(p.url("http", "/")).send().await.unwrap();
        seen.insert(r.text().await.unwrap());
    }
    assert_eq!(seen.len(), 2, "{seen:?}\n{}", p.stderr_text());
    // Files from the mounted public directory.
    let r = client()
        .get(p.url("http", "/assets/index.html"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("Served by Portico"));
    // The sticky route pins a client with a signed cookie.
    let r = client().get(p.url("http", "/echo")).send().await.unwrap();
    let cookie = r
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(cookie.starts_with("portico_affinity"), "{cookie:?}");
    let pinned = r.text().await.unwrap();
    let pair = cookie.split(';').next().unwrap().to_string();
    for _ in 0..10 {
        let r = client()
            .get(p.url("http", "/echo"))
            .header("cookie", &pair)
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), pinned, "{cookie}");
    }
    // The compose healthcheck, as written, against this config.
    let health_env = [("PORTICO_CONFIG", path_s), ("STICKY_KEY", key.as_str())];
    let (code, out, err) = run_cli(&strs(&health), &health_env);
    assert_eq!(code, 0, "{out}{err}");
    p.stop();
}

#[test]
fn the_systemd_unit_commands_check_and_refuse_a_bad_config() {
    let unit = read("systemd/portico.service");
    let pre: Vec<String> = unit_value(&unit, "ExecStartPre")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let start: Vec<String> = unit_value(&unit, "ExecStart")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(unit_value(&unit, "Type"), "notify");
    assert_eq!(unit_value(&unit, "NotifyAccess"), "all");
    assert_eq!(unit_value(&unit, "RestartPreventExitStatus"), "2");
    assert!(unit.contains("PORTICO_UPGRADE_SOCKET=/run/portico/upgrade.sock"));
    assert!(unit_value(&unit, "Documentation").starts_with("man:portico(1)"));
    let map = |cmd: &[String], config: &Path| -> Vec<String> {
        args_of(cmd)
            .into_iter()
            .map(|a| {
                if a == "/etc/portico/portico.toml" {
                    config.to_str().unwrap().to_string()
                } else {
                    a
                }
            })
            .collect()
    };
    let good = repo("examples/basic.toml");
    let (code, out, err) = run_cli(&strs(&map(&pre, &good)), &[]);
    assert_eq!(code, 0, "{out}{err}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("portico.toml");
    std::fs::write(
        &bad,
        "[[listeners]]\nname = \"web\"\naddres = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(&strs(&map(&pre, &bad)), &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("portico.toml:3"), "{err}");
    // ExecStart on a bad config exits 2 too, which RestartPreventExitStatus does not restart.
    let (code, _, err) = run_cli(&strs(&map(&start, &bad)), &[]);
    assert_eq!(code, 2, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_this_host_truthfully_and_checks_dns_and_backends() {
    let origin = Origin::named("app").await;
    let dns = TestDns::start().await;
    dns.set_ips("api.test", &[std::net::IpAddr::from([127, 0, 0, 1])], 5);
    let dead = dead_addr();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portico.toml");
    std::fs::write(
        &path,
        format!(
            "[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n\
             [dns]\nservers = [\"{}\"]\ntimeout = \"1s\"\nattempts = 1\n\
             [upstreams.app]\nbackends = [\"{}\", \"{dead}\"]\n\
             [upstreams.api]\ndiscovery = [{{ dns = \"api.test\", port = {} }}, {{ dns = \"missing.test\", port = 1 }}]\n\
             [[routes]]\nupstream = \"app\"\n[[routes]]\npath = \"/api\"\nupstream = \"api\"\n",
            dns.addr,
            origin.addr,
            origin.addr.port()
        ),
    )
    .unwrap();
    let path_s = path.to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        run_cli(&["doctor", "--json", "-c", path_s.as_str()], &[])
    })
    .await
    .unwrap();
    let (code, out, err) = out;
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    let findings = v["findings"].as_array().unwrap();
    let find = |check: &str| -> &serde_json::Value {
        findings
            .iter()
            .find(|f| f["check"] == check)
            .unwrap_or_else(|| panic!("no {check}: {v:#}"))
    };
    // The exit status follows the findings.
    let to_fix = findings.iter().filter(|f| f["status"] == "fix").count();
    assert_eq!(v["to_fix"], to_fix);
    assert_eq!(code, i32::from(to_fix > 0));
    // Reachable and unreachable backends, answering and failing names.
    assert_eq!(
        find(&format!("upstream app {}", origin.addr))["status"],
        "ok"
    );
    let d = find(&format!("upstream app {dead}"));
    assert_eq!(d["status"], "fix");
    assert!(d["fix"].as_str().unwrap().contains("start the backend"));
    assert_eq!(find("dns dns:api.test")["status"], "ok");
    assert_eq!(
        find(&format!("upstream api {}", origin.addr))["status"],
        "ok"
    );
    assert_eq!(find("dns dns:missing.test")["status"], "fix");
    // What it says about this host is what this host has.
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let nofile = find("open files")["detail"].as_str().unwrap().to_string();
    assert!(
        nofile.starts_with(&format!("soft {soft}, hard {hard};")),
        "{nofile}"
    );
    for key in ["fs.file-max", "net.core.somaxconn", "net.ipv4.tcp_tw_reuse"] {
        let real = std::fs::read_to_string(format!("/proc/sys/{}", key.replace('.', "/")))
            .unwrap()
            .trim()
            .to_string();
        let detail = find(key)["detail"].as_str().unwrap().to_string();
        assert!(detail.starts_with(&real), "{key}: {detail} vs {real}");
    }

    // Text output and an invalid config.
    let path_s = path.to_str().unwrap();
    let (_, text, _) = run_cli(&["doctor", "-c", path_s], &[]);
    assert!(text.contains("FIX  upstream app"), "{text}");
    assert!(text.contains("fix: start the backend"), "{text}");
    std::fs::write(&path, "[[listeners]]\nname = 5\n").unwrap();
    let (code, _, err) = run_cli(&["doctor", "-c", path_s], &[]);
    assert_eq!(code, 2, "{err}");
}
