//! The Portico process under test: start it on a config, find its listeners in its log, send it
//! signals, read its output; run the CLI.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

/// A running Portico process.
pub struct Portico {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    listeners: HashMap<String, SocketAddr>,
    admin: Option<SocketAddr>,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
}

/// The portico binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_portico")
}

/// Parses `key=value` fields out of a text log line (values may be quoted).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!(" {key}=");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    if let Some(q) = rest.strip_prefix('"') {
        return q.split('"').next();
    }
    rest.split_whitespace().next()
}

impl Portico {
    /// Writes `config` to a temp dir and starts `portico run -c` on it; waits until it listens.
    pub fn start(config: &str) -> Portico {
        Self::start_with(config, &[], |_| {})
    }

    /// Starts Portico on a configuration built with [`Config`].
    pub fn with(config: &Config) -> Portico {
        Self::start(&config.render())
    }

    /// Like [`Portico::start`], with extra environment variables and a hook to add files to the
    /// config directory first.
    pub fn start_with(config: &str, env: &[(&str, &str)], prepare: impl FnOnce(&Path)) -> Portico {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        let config_path = dir.path().join("portico.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("run").arg("-c").arg(&config_path);
        Self::spawn(cmd, dir, config_path, env)
    }

    /// Starts `portico run -c path` on a config the test manages itself.
    #[allow(dead_code)]
    pub fn start_path(path: &Path, env: &[(&str, &str)]) -> Portico {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("run").arg("-c").arg(path);
        Self::spawn(cmd, dir, path.to_path_buf(), env)
    }

    /// Starts `portico run --upgrade -c path`: it takes the sockets of a running Portico,
    /// which must be sent SIGQUIT meanwhile.
    #[allow(dead_code)]
    pub fn start_upgrade(path: &Path, env: &[(&str, &str)]) -> Portico {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("run").arg("--upgrade").arg("-c").arg(path);
        Self::spawn(cmd, dir, path.to_path_buf(), env)
    }

    /// Starts the binary with exactly `args` (no config file unless they name one).
    #[allow(dead_code)]
    pub fn start_args(args: &[&str], env: &[(&str, &str)]) -> Portico {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(args).env_remove("PORTICO_CONFIG");
        let path = dir.path().join("none");
        Self::spawn(cmd, dir, path, env)
    }

    /// Starts `portico run` with no config file (the embedded default).
    pub fn start_default(env: &[(&str, &str)]) -> Portico {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("run").env_remove("PORTICO_CONFIG");
        let path = dir.path().join("none");
        Self::spawn(cmd, dir, path, env)
    }

    fn spawn(
        mut cmd: Command,
        dir: tempfile::TempDir,
        config_path: PathBuf,
        env: &[(&str, &str)],
    ) -> Portico {
        cmd.env_remove("PORTICO_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("start portico");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        {
            let out = child.stderr.take().unwrap();
            let lines = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        {
            let out = child.stdout.take().unwrap();
            let lines = stdout.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let mut p = Portico {
            child: Some(child),
            dir,
            config_path,
            listeners: HashMap::new(),
            admin: None,
            stderr,
            stdout,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(remaining.min(Duration::from_millis(200))) {
                Ok(line) => {
                    let (msg, listener, address) = if line.starts_with('{') {
                        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                        (
                            v["message"].as_str().unwrap_or("").to_string(),
                            v["listener"].as_str().map(str::to_string),
                            v["address"].as_str().map(str::to_string),
                        )
                    } else {
                        let msg =
                            if line.contains(" listening ") || line.contains(" admin listening ") {
                                if line.contains("admin listening") {
                                    "admin listening"
                                } else {
                                    "listening"
                                }
                            } else if line.contains("portico started") {
                                "portico started"
                            } else {
                                ""
                            };
                        (
                            msg.to_string(),
                            field(&line, "listener").map(str::to_string),
                            field(&line, "address").map(str::to_string),
                        )
                    };
                    match msg.as_str() {
                        "listening" => {
                            p.listeners
                                .insert(listener.unwrap(), address.unwrap().parse().unwrap());
                        }
                        "admin listening" => p.admin = Some(address.unwrap().parse().unwrap()),
                        "portico started" => return p,
                        _ => {}
                    }
                }
                Err(_) => {
                    if let Some(status) = p.child.as_mut().unwrap().try_wait().unwrap() {
                        std::thread::sleep(Duration::from_millis(100));
                        panic!(
                            "portico exited with {status} before starting:\n{}",
                            p.stderr_text()
                        );
                    }
                    if Instant::now() > deadline {
                        panic!("portico did not start in time:\n{}", p.stderr_text());
                    }
                }
            }
        }
    }

    /// Address of a listener, by name.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        *self
            .listeners
            .get(listener)
            .unwrap_or_else(|| panic!("no listener {listener:?}; have {:?}", self.listeners))
    }

    /// `http://<listener addr><path>`.
    pub fn url(&self, listener: &str, path: &str) -> String {
        format!("http://{}{path}", self.addr(listener))
    }

    /// Admin address.
    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("admin listener")
    }

    /// `http://<admin addr><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin())
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit; returns its exit code and how long it took.
    pub fn wait_exit(&mut self, timeout: Duration) -> (Option<i32>, Duration) {
        let start = Instant::now();
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status.code(), start.elapsed());
            }
            if start.elapsed() > timeout {
                panic!(
                    "portico did not exit within {timeout:?}:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) -> Duration {
        self.signal("TERM");
        let (code, took) = self.wait_exit(Duration::from_secs(10));
        assert_eq!(code, Some(0), "portico exit code:\n{}", self.stderr_text());
        took
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until stdout (the access log) holds a line containing `needle`.
    #[allow(dead_code)]
    pub async fn wait_stdout(&self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.stdout_lines().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            assert!(
                start.elapsed() < timeout,
                "no stdout line with {needle:?} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until stderr holds a line containing `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            if start.elapsed() > timeout {
                panic!(
                    "no log line with {needle:?} within {timeout:?}:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Portico {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// The admin's `/status` document.
#[allow(dead_code)]
pub async fn status(p: &Portico) -> serde_json::Value {
    client()
        .get(p.admin_url("/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Runs `portico <args>` to completion; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args).env_remove("PORTICO_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
