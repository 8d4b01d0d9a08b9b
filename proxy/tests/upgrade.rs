//! Zero-downtime binary upgrade through the real binary: a second Portico takes the
//! listening sockets over (SIGQUIT handover) while clients keep connecting.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_process_takes_over_without_refusing_a_connection() {
    let origin = Origin::named("app").await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("upgrade.sock");
    let sock_s = sock.to_str().unwrap().to_string();
    let cfg_path = dir.path().join("portico.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[server]\nshutdown_timeout = \"5s\"\n[[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[upstreams.app]\nbackends = [\"{}\"]\n",
            origin.addr
        ),
    )
    .unwrap();
    let mut old = Portico::start_path(&cfg_path, &[("PORTICO_UPGRADE_SOCKET", sock_s.as_str())]);
    let addr = old.addr("http");
    let admin = old.admin();

    // Clients: new connection per request (a refused connect would show), bounded to 60 s.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, errors) = (stop.clone(), ok.clone(), failed.clone(), errors.clone());
        load.push(tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                let c = reqwest::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(0)
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                match c.get(format!("http://{addr}/")).send().await {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.lock().unwrap().push(format!("{other:?}"));
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The new process waits for the sockets; the old one hands them over on SIGQUIT.
    let old_pid = old.pid();
    let quitter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        std::process::Command::new("kill")
            .args(["-QUIT", &old_pid.to_string()])
            .status()
            .unwrap();
    });
    let new = tokio::task::spawn_blocking(move || {
        Portico::start_upgrade(&cfg_path, &[("PORTICO_UPGRADE_SOCKET", sock_s.as_str())])
    })
    .await
    .unwrap();
    quitter.join().unwrap();
    assert_eq!(new.addr("http"), addr, "same listening socket");
    assert_eq!(new.admin(), admin);

    // The old process drains and exits by itself.
    let (code, _) = tokio::task::spawn_blocking(move || {
        let r = old.wait_exit(Duration::from_secs(10));
        (r, old)
    })
    .await
    .map(|(r, _)| r)
    .unwrap();
    assert_eq!(code, Some(0));
    // Traffic continues on the new process alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{:?}",
        errors.lock().unwrap()
    );
    assert!(ok.load(Ordering::Relaxed) > 50);
    assert!(new.stderr_text().contains("took over the sockets"));
    let r = client().get(new.url("http", "/")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "app");
}

#[tokio::test]
async fn sigquit_without_a_successor_keeps_serving() {
    let origin = Origin::named("app").await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nobody.sock");
    let p = Portico::start_with(
        &format!(
            "[[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n[upstreams.app]\nbackends = [\"{}\"]\n",
            origin.addr
        ),
        &[("PORTICO_UPGRADE_SOCKET", sock.to_str().unwrap())],
        |_| {},
    );
    p.signal("QUIT");
    p.wait_log("upgrade failed, still serving", Duration::from_secs(10));
    let r = client().get(p.url("http", "/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}
