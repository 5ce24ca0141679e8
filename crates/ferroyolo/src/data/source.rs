//! Prediction sources as Ultralytics users write them: an image file, a folder, a glob pattern,
//! a `.txt` list of paths or URLs, or an http(s) URL.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use image::RgbImage;

use super::image_io::{decode_image, load_image};

/// File extensions (lower case) taken as images when expanding folders, globs and lists.
/// These are the still-image formats the reference accepts that this crate can decode
/// (`mpo` files are JPEGs); TIFF, DNG and HEIC are not supported.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "webp", "mpo"];

/// Largest download accepted for a URL source.
const MAX_DOWNLOAD_BYTES: u64 = 64 << 20;
/// Time allowed for a whole download.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// One image to read.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceItem {
    /// A local file.
    File(PathBuf),
    /// An http(s) URL.
    Url(String),
}

impl SourceItem {
    /// The item's file name, e.g. `"bus.jpg"` (for a URL: its last path segment, without any
    /// query string), as used to name saved results.
    pub fn name(&self) -> String {
        match self {
            SourceItem::File(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string()),
            SourceItem::Url(u) => {
                let path = u.split(['?', '#']).next().unwrap_or(u);
                let path = path.split_once("://").map_or(path, |(_, rest)| rest);
                match path.rsplit('/').next() {
                    Some(last) if !last.is_empty() && path.contains('/') => last.to_string(),
                    _ => "image.jpg".to_string(),
                }
            }
        }
    }
}

impl std::fmt::Display for SourceItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceItem::File(p) => write!(f, "{}", p.display()),
            SourceItem::Url(u) => f.write_str(u),
        }
    }
}

fn is_url(s: &str) -> bool {
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

fn has_image_extension(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Sorts like Python's `sorted()` on path strings (code point order), which the reference uses.
fn sort_paths(paths: &mut [PathBuf]) {
    paths.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
}

/// Images of a folder (not recursive), sorted.
fn folder_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot list folder {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot list folder {}", dir.display()))?
            .path();
        if path.is_file() && has_image_extension(&path) {
            files.push(path);
        }
    }
    sort_paths(&mut files);
    Ok(files)
}

/// Image files matching a glob pattern (`**` recurses), sorted.
fn glob_images(pattern: &str) -> Result<Vec<PathBuf>> {
    let paths = glob::glob(pattern).with_context(|| format!("invalid glob pattern {pattern:?}"))?;
    let mut files: Vec<PathBuf> = paths
        .filter_map(|p| p.ok())
        .filter(|p| p.is_file() && has_image_extension(p))
        .collect();
    sort_paths(&mut files);
    Ok(files)
}

/// Expands one path-like entry (file, folder or glob) into items.
fn expand_path(spec: &str, base: Option<&Path>) -> Result<Vec<SourceItem>> {
    if is_glob(spec) {
        let pattern = match base {
            Some(b) if Path::new(spec).is_relative() => b.join(spec).to_string_lossy().into_owned(),
            _ => spec.to_string(),
        };
        return Ok(glob_images(&pattern)?
            .into_iter()
            .map(SourceItem::File)
            .collect());
    }
    let mut path = PathBuf::from(spec);
    if let Some(b) = base {
        // A list's relative entries are taken against the list's folder, then (as the reference
        // also does) against the working directory.
        if path.is_relative() && (b.join(&path).exists() || !path.exists()) {
            path = b.join(&path);
        }
    }
    if path.is_dir() {
        Ok(folder_images(&path)?
            .into_iter()
            .map(SourceItem::File)
            .collect())
    } else if path.is_file() {
        Ok(vec![SourceItem::File(path)])
    } else {
        bail!("source {} does not exist", path.display())
    }
}

/// Reads a `.txt` list: one path or URL per line; blank lines are skipped.
fn list_file_items(list: &Path) -> Result<Vec<SourceItem>> {
    let text = std::fs::read_to_string(list)
        .with_context(|| format!("cannot read list file {}", list.display()))?;
    let base = list.parent().unwrap_or(Path::new("."));
    let mut items = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if is_url(line) {
            items.push(SourceItem::Url(line.to_string()));
        } else {
            items.extend(
                expand_path(line, Some(base))
                    .with_context(|| format!("in list file {}", list.display()))?,
            );
        }
    }
    Ok(items)
}

/// A source argument as Ultralytics users write it: an image file, a directory (its images,
/// sorted), a glob ("imgs/*.jpg"), a .txt list file (one path or URL per line, relative paths
/// against the list's folder), or an http(s) URL. Error if nothing matches.
///
/// A file named explicitly is taken whatever its extension (decoding decides); folders, globs
/// and lists keep only files with an [`IMAGE_EXTENSIONS`] extension (case-insensitive).
pub fn resolve_source(spec: &str) -> Result<Vec<SourceItem>> {
    let spec = spec.trim();
    if spec.is_empty() {
        bail!("empty source");
    }
    if is_url(spec) {
        return Ok(vec![SourceItem::Url(spec.to_string())]);
    }
    let path = Path::new(spec);
    let items = if !is_glob(spec)
        && path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("txt"))
    {
        list_file_items(path)?
    } else {
        expand_path(spec, None)?
    };
    if items.is_empty() {
        bail!(
            "no images found in source {spec} (looked for {})",
            IMAGE_EXTENSIONS.join(", ")
        );
    }
    Ok(items)
}

/// Loads one item (URL: downloaded into memory with ureq, size-limited, timeout). Errors name the item.
pub fn read_item(item: &SourceItem) -> Result<RgbImage> {
    match item {
        SourceItem::File(p) => load_image(p),
        SourceItem::Url(url) => {
            let bytes = download(url)?;
            decode_image(&bytes, url)
        }
    }
}

/// Fetches a URL into memory, refusing bodies over [`MAX_DOWNLOAD_BYTES`].
fn download(url: &str) -> Result<Vec<u8>> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(DOWNLOAD_TIMEOUT))
        .build()
        .into();
    let response = agent
        .get(url)
        .call()
        .with_context(|| format!("cannot download {url}"))?;
    let mut bytes = Vec::new();
    // Read one byte past the limit to tell "exactly at the limit" from "too large".
    response
        .into_body()
        .into_reader()
        .take(MAX_DOWNLOAD_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot download {url}"))?;
    if bytes.len() as u64 > MAX_DOWNLOAD_BYTES {
        bail!(
            "{url}: download larger than {} MiB",
            MAX_DOWNLOAD_BYTES >> 20
        );
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh temporary folder with some images, other files and a subfolder.
    fn fixture_tree(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ferroyolo-source-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for name in [
            "b.jpg",
            "a.PNG",
            "c.webp",
            "notes.txt",
            "d.tiff",
            "sub/e.jpg",
        ] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        dir
    }

    fn names(items: &[SourceItem]) -> Vec<String> {
        items.iter().map(SourceItem::name).collect()
    }

    #[test]
    fn folder_lists_sorted_images_only() {
        let dir = fixture_tree("dir");
        let items = resolve_source(dir.to_str().unwrap()).unwrap();
        assert_eq!(names(&items), ["a.PNG", "b.jpg", "c.webp"]);
        assert_eq!(items[1], SourceItem::File(dir.join("b.jpg")));
    }

    #[test]
    fn glob_patterns() {
        let dir = fixture_tree("glob");
        let items = resolve_source(&format!("{}/*.jpg", dir.display())).unwrap();
        assert_eq!(names(&items), ["b.jpg"]);
        let items = resolve_source(&format!("{}/**/*.jpg", dir.display())).unwrap();
        assert_eq!(names(&items), ["b.jpg", "e.jpg"]);
        assert!(resolve_source(&format!("{}/*.gif", dir.display())).is_err());
    }

    #[test]
    fn list_file_relative_to_its_folder() {
        let dir = fixture_tree("list");
        let list = dir.join("list.txt");
        std::fs::write(
            &list,
            "sub/e.jpg\n\n  b.jpg  \nhttps://example.com/img/zidane.jpg?raw=1\n",
        )
        .unwrap();
        let items = resolve_source(list.to_str().unwrap()).unwrap();
        assert_eq!(
            items,
            [
                SourceItem::File(dir.join("sub/e.jpg")),
                SourceItem::File(dir.join("b.jpg")),
                SourceItem::Url("https://example.com/img/zidane.jpg?raw=1".into()),
            ]
        );
        assert_eq!(items[2].name(), "zidane.jpg");

        std::fs::write(&list, "missing.jpg\n").unwrap();
        let msg = format!("{:#}", resolve_source(list.to_str().unwrap()).unwrap_err());
        assert!(
            msg.contains("missing.jpg") && msg.contains("list.txt"),
            "{msg}"
        );
    }

    #[test]
    fn single_file_and_url() {
        let dir = fixture_tree("file");
        let f = dir.join("notes.txt");
        std::fs::write(&f, "").unwrap();
        // An explicitly named image file is kept whatever its extension.
        let tiff = dir.join("d.tiff");
        assert_eq!(
            resolve_source(tiff.to_str().unwrap()).unwrap(),
            [SourceItem::File(tiff)]
        );
        let url = "https://ultralytics.com/images/bus.jpg";
        assert_eq!(resolve_source(url).unwrap(), [SourceItem::Url(url.into())]);
        assert_eq!(SourceItem::Url(url.into()).name(), "bus.jpg");
        assert_eq!(SourceItem::Url("http://host".into()).name(), "image.jpg");
    }

    #[test]
    fn missing_and_empty_sources_are_errors() {
        let msg = format!("{:#}", resolve_source("/no/such/place/x.jpg").unwrap_err());
        assert!(
            msg.contains("/no/such/place/x.jpg") && msg.contains("does not exist"),
            "{msg}"
        );
        let dir =
            std::env::temp_dir().join(format!("ferroyolo-source-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let msg = format!("{:#}", resolve_source(dir.to_str().unwrap()).unwrap_err());
        assert!(msg.contains("no images found"), "{msg}");
        assert!(resolve_source("  ").is_err());
    }

    #[test]
    fn read_item_names_the_bad_file() {
        let dir = fixture_tree("read");
        let item = SourceItem::File(dir.join("b.jpg")); // contains "x"
        let msg = format!("{:#}", read_item(&item).unwrap_err());
        assert!(msg.contains("b.jpg"), "{msg}");
    }
}
