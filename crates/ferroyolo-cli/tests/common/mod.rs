//! Helpers shared by the CLI tests: a fresh scratch folder and running the built `ferroyolo`.
// Each test file uses the helpers it needs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// An empty folder `ferroyolo-cli-{tag}-{pid}` under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferroyolo-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the `ferroyolo` binary of this build in `cwd`.
pub fn ferroyolo(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferroyolo")).args(args).current_dir(cwd).output().expect("run ferroyolo")
}

/// Process output as text (lossy).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
