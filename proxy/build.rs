//! Build information for `portico --version` and the `portico_build_info` metric: the git
//! commit (when built from a checkout), the compiler and the target. Every value falls back to
//! "unknown" so a build from a source tarball (or a Docker context without `.git`) works.

use std::process::Command;

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    // A commit changes HEAD or a ref; nothing else needs a rebuild of the version string.
    for p in ["../.git/HEAD", "../.git/refs/heads", "../.git/packed-refs"] {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-env-changed=PORTICO_BUILD_COMMIT");
    let commit = std::env::var("PORTICO_BUILD_COMMIT")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| run("git", &["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = run(&rustc, &["--version"])
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=PORTICO_COMMIT={commit}");
    println!("cargo:rustc-env=PORTICO_RUSTC={rustc_version}");
    println!("cargo:rustc-env=PORTICO_TARGET={target}");
    println!("cargo:rustc-env=PORTICO_PROFILE={profile}");
}
