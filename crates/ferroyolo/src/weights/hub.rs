//! Official weights by name: `yolo26n.pt` … `yolo26x.pt` are looked up in the working directory,
//! then in the cache folder, then downloaded from the Ultralytics release assets.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Where released weights are downloaded from.
pub const RELEASE_URL: &str = "https://github.com/ultralytics/assets/releases/download/v8.4.0";

/// Names that can be downloaded.
pub fn is_official_name(name: &str) -> bool {
    matches!(name, "yolo26n.pt" | "yolo26s.pt" | "yolo26m.pt" | "yolo26l.pt" | "yolo26x.pt")
}

/// The cache folder: `$FERROYOLO_HOME`, else `$XDG_CACHE_HOME/ferroyolo`, else `~/.cache/ferroyolo`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FERROYOLO_HOME") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("ferroyolo");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("ferroyolo")
}

/// Resolves a weights argument to an existing file, downloading official weights if needed.
pub fn resolve_weights(arg: &Path) -> Result<PathBuf> {
    if arg.is_file() {
        return Ok(arg.to_path_buf());
    }
    let name = arg.to_str().unwrap_or_default();
    if !is_official_name(name) {
        if arg.exists() {
            bail!("{}: not a file", arg.display());
        }
        bail!("{}: no such weights file", arg.display());
    }
    let cached = cache_dir().join(name);
    if cached.is_file() {
        return Ok(cached);
    }
    let url = format!("{RELEASE_URL}/{name}");
    download(&url, &cached).with_context(|| {
        format!(
            "{name} was not found in the working directory or {}, and downloading it from {url} failed; \
             place the file in either folder (or pass its path) and try again",
            cache_dir().display()
        )
    })?;
    Ok(cached)
}

/// Downloads `url` to `dest` atomically (a `.part` file renamed into place), with a progress bar.
pub fn download(url: &str, dest: &Path) -> Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!("Downloading {url} to '{}'...", dest.display());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(600)))
        .timeout_connect(Some(std::time::Duration::from_secs(20)))
        .build()
        .into();
    let mut resp = agent.get(url).call().with_context(|| format!("GET {url}"))?;
    let len = resp.body().content_length();
    let bar = indicatif::ProgressBar::new(len.unwrap_or(0));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let part = dest.with_extension("part");
    let mut file = std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
    let mut reader = resp.body_mut().with_config().limit(2 << 30).reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    let result: Result<()> = (|| {
        loop {
            let n = reader.read(&mut buf).context("reading the download")?;
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n]).with_context(|| format!("writing {}", part.display()))?;
            total += n as u64;
            bar.set_position(total);
        }
        if let Some(l) = len {
            if l != total {
                bail!("download ended after {total} of {l} bytes");
            }
        }
        file.sync_all()?;
        Ok(())
    })();
    bar.finish_and_clear();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    std::fs::rename(&part, dest).with_context(|| format!("moving {} into place", part.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_files_resolve_to_themselves_and_unknown_names_fail() {
        let dir = std::env::temp_dir().join(format!("ferroyolo-hub-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("custom.pt");
        std::fs::write(&f, b"x").unwrap();
        assert_eq!(resolve_weights(&f).unwrap(), f);
        let err = resolve_weights(&dir.join("missing.pt")).unwrap_err().to_string();
        assert!(err.contains("no such weights file"), "{err}");
        assert!(resolve_weights(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn offline_download_names_where_to_put_the_file() {
        // No network in tests: point the cache at an empty folder and use an unreachable URL.
        let dir = std::env::temp_dir().join(format!("ferroyolo-dl-{}", std::process::id()));
        let err = download("http://127.0.0.1:9/yolo26n.pt", &dir.join("yolo26n.pt")).unwrap_err();
        assert!(format!("{err:#}").contains("127.0.0.1"), "{err:#}");
        assert!(!dir.join("yolo26n.part").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
