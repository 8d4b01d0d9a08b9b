//! What this binary is: version, git commit, compiler and target, captured by `build.rs`.
//! Shown by `portico --version`, logged at start and exported as `portico_build_info`.

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit the binary was built from ("unknown" outside a checkout).
pub const COMMIT: &str = env!("PORTICO_COMMIT");
/// The rustc version that built it.
pub const RUSTC: &str = env!("PORTICO_RUSTC");
/// The target triple.
pub const TARGET: &str = env!("PORTICO_TARGET");
/// The cargo profile ("release" or "debug").
pub const PROFILE: &str = env!("PORTICO_PROFILE");

/// The text after `portico ` in `portico --version`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit: ",
    env!("PORTICO_COMMIT"),
    "\nrustc: ",
    env!("PORTICO_RUSTC"),
    "\ntarget: ",
    env!("PORTICO_TARGET"),
    "\nprofile: ",
    env!("PORTICO_PROFILE"),
    "\npingora: 0.9.1"
);
