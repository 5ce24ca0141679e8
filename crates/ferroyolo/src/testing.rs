//! Support for tests and benchmarks that read the shared reference fixtures.
//!
//! Fixtures live outside the repository in `../shared/fixtures` (relative to the workspace root).
//! A test that needs them calls [`fixtures_dir`]: when the folder is absent it returns `None`
//! (the test prints why and skips) except under `CI=true`, where absence is a failure.

use std::path::PathBuf;

/// The workspace root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `../shared/fixtures`, or `None` (with a message) when it is missing outside CI.
///
/// # Panics
/// When the folder is missing and the environment variable `CI` is `true`.
pub fn fixtures_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("FERROYOLO_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/fixtures"));
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
        panic!("fixtures folder {} is missing (required under CI=true)", dir.display());
    }
    eprintln!("skipping: fixtures folder {} not found", dir.display());
    None
}

/// Evaluates to the fixtures folder or returns from the enclosing test (skip).
#[macro_export]
macro_rules! fixtures_or_skip {
    () => {
        match $crate::testing::fixtures_dir() {
            Some(d) => d,
            None => return,
        }
    };
}
