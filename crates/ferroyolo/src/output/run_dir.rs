//! Run folders: `runs/detect/predict`, then `predict2`, `predict3`… as the reference numbers them.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The first free folder among `project/name`, `project/name2`, `project/name3`… (or
/// `project/name` itself when `exist_ok`), created.
pub fn increment_run_dir(project: &Path, name: &str, exist_ok: bool) -> Result<PathBuf> {
    let mut dir = project.join(name);
    if !exist_ok {
        let mut n = 2;
        while dir.exists() {
            dir = project.join(format!("{name}{n}"));
            n += 1;
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_runs_like_the_reference() {
        let root = std::env::temp_dir().join(format!("ferroyolo-runs-{}", std::process::id()));
        let a = increment_run_dir(&root, "predict", false).unwrap();
        let b = increment_run_dir(&root, "predict", false).unwrap();
        let c = increment_run_dir(&root, "predict", false).unwrap();
        assert_eq!(a, root.join("predict"));
        assert_eq!(b, root.join("predict2"));
        assert_eq!(c, root.join("predict3"));
        assert_eq!(increment_run_dir(&root, "predict", true).unwrap(), root.join("predict"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
