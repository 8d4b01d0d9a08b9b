//! The systemd notify protocol, spoken to a real datagram socket standing in for systemd:
//! READY once serving, RELOADING/MONOTONIC_USEC then READY around reloads, watchdog pings,
//! STATUS lines, and on SIGUSR2 a successor that the running process starts itself, which
//! takes the sockets and names itself MAINPID while traffic keeps flowing.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Collects notify datagrams.
struct Notify {
    sock: UnixDatagram,
    seen: Vec<String>,
}

impl Notify {
    fn bind(path: &std::path::Path) -> Notify {
        let sock = UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Notify {
            sock,
            seen: Vec::new(),
        }
    }

    /// Waits for a message with a line for which `want` holds; returns that message.
    fn wait(&mut self, what: &str, timeout: Duration, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if Instant::now() > deadline {
                panic!(
                    "no notify message with {what} within {timeout:?}; saw {:?}",
                    self.seen
                );
            }
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                if msg.lines().any(&want) {
                    return msg;
                }
            }
        }
    }
}

/// Kills a process that is not the test's child (the successor) when the test ends.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0 > 0 && alive(self.0) {
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(self.0.to_string())
                .status();
        }
    }
}

/// Whether `pid` runs (a zombie has exited).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn kill(pid: i32, sig: &str) {
    assert!(std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_ready_reload_watchdog_and_a_self_started_upgrade() {
    let origin = Origin::named("app").await;
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let mut notify = Notify::bind(&notify_path);
    let upgrade_sock = dir.path().join("upgrade.sock");
    let cfg_path = dir.path().join("portico.toml");
    let config = Config::new()
        .server("shutdown_timeout", "5s")
        .upstream(Upstream::new("app", [origin.addr]))
        .render();
    std::fs::write(&cfg_path, &config).unwrap();
    let env = [
        ("NOTIFY_SOCKET", notify_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "300000"),
        ("PORTICO_UPGRADE_SOCKET", upgrade_sock.to_str().unwrap()),
    ];
    let mut old = Portico::start_path(&cfg_path, &env);
    let addr = old.addr("http");
    let old_pid = old.pid();

    let ready = notify.wait("READY=1", Duration::from_secs(5), |l| l == "READY=1");
    assert!(
        ready.contains("STATUS=serving: config generation 1"),
        "{ready:?}"
    );
    assert!(
        !ready.contains("MAINPID="),
        "the first process is the main PID already"
    );
    notify.wait("WATCHDOG=1", Duration::from_secs(3), |l| l == "WATCHDOG=1");

    // A reload: RELOADING=1 with the monotonic time, then READY=1 again.
    old.signal("HUP");
    let reloading = notify.wait("RELOADING=1", Duration::from_secs(5), |l| {
        l == "RELOADING=1"
    });
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    let after = notify.wait("READY=1", Duration::from_secs(5), |l| l == "READY=1");
    assert!(after.contains("generation 2"), "{after:?}");

    // A successor that cannot start (the config is now invalid): the old process keeps serving.
    std::fs::write(&cfg_path, "[[listeners]]\nname = 1\n").unwrap();
    old.signal("USR2");
    old.wait_log("still serving", Duration::from_secs(20));
    let r = client()
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    std::fs::write(&cfg_path, &config).unwrap();

    // Traffic on new connections throughout the upgrade.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let c = reqwest::Client::builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap();
                match c.get(format!("http://{addr}/")).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    old.signal("USR2");
    let mainpid = notify.wait("MAINPID", Duration::from_secs(20), |l| {
        l.starts_with("MAINPID=")
    });
    assert!(mainpid.lines().any(|l| l == "READY=1"), "{mainpid:?}");
    let new_pid: i32 = mainpid
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .unwrap()
        .parse()
        .unwrap();
    let _guard = KillOnDrop(new_pid);
    assert_ne!(new_pid, old_pid);
    assert!(alive(new_pid));
    // The old process drains and exits by itself; it says nothing more to systemd.
    let (code, _) = tokio::task::spawn_blocking(move || {
        let r = old.wait_exit(Duration::from_secs(15));
        (r, old)
    })
    .await
    .map(|(r, _)| r)
    .unwrap();
    assert_eq!(code, Some(0));
    // The successor pings the watchdog once it is the main process.
    notify.seen.clear();
    notify.wait(
        "WATCHDOG=1 from the successor",
        Duration::from_secs(3),
        |l| l == "WATCHDOG=1",
    );
    // Each successor upgrades in turn (the chain systemd follows), under the same load.
    let mut current = new_pid;
    let mut guards = vec![_guard];
    for round in 0..5 {
        kill(current, "USR2");
        let msg = notify.wait("MAINPID", Duration::from_secs(20), |l| {
            l.starts_with("MAINPID=") && l != format!("MAINPID={current}")
        });
        let next: i32 = msg
            .lines()
            .find_map(|l| l.strip_prefix("MAINPID="))
            .unwrap()
            .parse()
            .unwrap();
        guards.push(KillOnDrop(next));
        let deadline = Instant::now() + Duration::from_secs(15);
        while alive(current) {
            assert!(
                Instant::now() < deadline,
                "round {round}: {current} did not exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        current = next;
    }
    let new_pid = current;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 20);
    assert!(
        !notify.seen.iter().any(|m| m.contains("STOPPING=1")),
        "a handover is not a stop: {:?}",
        notify.seen
    );

    // A real stop says STOPPING=1.
    kill(new_pid, "TERM");
    notify.wait("STOPPING=1", Duration::from_secs(5), |l| l == "STOPPING=1");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(new_pid) {
        assert!(Instant::now() < deadline, "the successor did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}
