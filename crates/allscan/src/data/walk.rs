//! The input walker of `predict`, `explain` and `segment`: paths (files and folders) -> every
//! image file below them, each visited once, in path order, plus what was skipped and why.
//!
//! Folders are walked recursively, following symbolic links; a link loop is detected (walkdir
//! compares each followed folder with its ancestors) and listed instead of being walked ~40
//! levels deep, and a file reached twice (two links to it, or a named file inside a named
//! folder) is kept once (canonical paths). Only regular files are kept: a FIFO, socket or
//! device named `x.jpg` is listed as skipped and never opened. Files named explicitly are
//! kept whatever their extension; inside folders only [`super::layout::IMAGE_EXTENSIONS`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Images found and paths skipped.
#[derive(Debug, Default)]
pub struct Walked {
    /// Image files, in the order found (each path's files in name order).
    pub files: Vec<PathBuf>,
    /// `(path, reason)` of everything passed over.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Walks `paths` (see the module docs).
pub fn image_files(paths: &[PathBuf]) -> Walked {
    let mut out = Walked::default();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut keep = |p: &Path, out: &mut Walked| {
        let canon = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        if seen.insert(canon) {
            out.files.push(p.to_path_buf());
        }
    };
    for root in paths {
        let meta = match std::fs::metadata(root) {
            Ok(m) => m,
            Err(e) => {
                out.skipped.push((root.clone(), format!("cannot read: {e}")));
                continue;
            }
        };
        if meta.is_file() {
            keep(root, &mut out);
            continue;
        }
        if !meta.is_dir() {
            out.skipped.push((root.clone(), "not a regular file (a FIFO, socket or device)".into()));
            continue;
        }
        for entry in walkdir::WalkDir::new(root).follow_links(true).sort_by_file_name() {
            match entry {
                Ok(e) => {
                    let p = e.path();
                    if e.file_type().is_dir() {
                        continue;
                    }
                    if !super::layout::has_image_extension(p) {
                        continue;
                    }
                    if !e.file_type().is_file() {
                        out.skipped.push((p.to_path_buf(), "not a regular file (a FIFO, socket or device)".into()));
                        continue;
                    }
                    keep(p, &mut out);
                }
                Err(err) => {
                    let path = err.path().map(Path::to_path_buf).unwrap_or_else(|| root.clone());
                    let reason = if err.loop_ancestor().is_some() {
                        "symbolic link loop (not followed)".to_owned()
                    } else if let Some(io) = err.io_error() {
                        format!("cannot read: {io}")
                    } else {
                        err.to_string()
                    };
                    out.skipped.push((path, reason));
                }
            }
        }
    }
    out
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn loops_fifos_and_double_links_are_walked_once_or_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir_all(root.join("a")).unwrap();
        image::RgbImage::new(20, 20).save(root.join("a/x.png")).unwrap();
        std::fs::write(root.join("a/notes.txt"), "x").unwrap();
        std::os::unix::fs::symlink(".", root.join("a/loop")).unwrap();
        std::os::unix::fs::symlink(root.join("a/x.png"), root.join("again.png")).unwrap();
        let fifo = root.join("pipe.jpg");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let w = image_files(&[root.clone(), root.join("a/x.png")]);
        assert_eq!(w.files, vec![root.join("a/x.png")], "{w:?}");
        assert!(w.skipped.iter().any(|(p, r)| p.ends_with("loop") && r.contains("loop")), "{w:?}");
        assert!(w.skipped.iter().any(|(p, r)| p == &fifo && r.contains("not a regular file")), "{w:?}");
        let w = image_files(&[root.join("missing")]);
        assert!(w.files.is_empty() && w.skipped[0].1.contains("cannot read"));
    }
}
