//! A local directory of text files, byte-level (vocab 256).
//!
//! Reading: files are read recursively in sorted order (entries of each directory sorted by
//! name, byte-wise; a directory's entries are visited where its name sorts) and concatenated
//! with `data.separator` (default "\n\n") between consecutive files. Hidden entries (name
//! starting with '.') are skipped, so `.git` and editor files stay out. Symbolic links to
//! files are read; symbolic links to directories are not followed (no cycles).
//!
//! Domains (`data.split_by_subdir`, default true): if the root has subdirectories holding
//! files, each top-level subdirectory is one domain named after it (sorted by name), and
//! files directly in the root, if any, form one more domain, named after the root and
//! listed first. Otherwise (or with `split_by_subdir = false`) the whole tree is one domain
//! named after the root directory.
//!
//! Split: per domain, the last round(n·`eval_fraction`) bytes are held out (see
//! `windows.rs` for how training, eval and probe windows are taken). Each part must hold
//! at least seq_len + 1 bytes. No entropy floor is known for real text (`None`).

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::error::DataError;
use super::windows::{train_len_for, SplitTokens, Tokens};

/// One loaded domain: its name and split bytes.
#[derive(Debug)]
pub(crate) struct TextDomain {
    pub(crate) name: String,
    pub(crate) tokens: SplitTokens,
}

fn sorted_entries(dir: &Path) -> Result<Vec<(PathBuf, bool)>, DataError> {
    let rd = fs::read_dir(dir).map_err(|e| DataError::io("path", dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| DataError::io("path", dir, e))?;
        let name = entry.file_name();
        if name.as_encoded_bytes().first() == Some(&b'.') {
            continue;
        }
        let path = entry.path();
        let ft = entry
            .file_type()
            .map_err(|e| DataError::io("path", &path, e))?;
        let is_dir = if ft.is_symlink() {
            // Follow links to files only.
            match fs::metadata(&path) {
                Ok(m) if m.is_file() => false,
                _ => continue,
            }
        } else if ft.is_dir() {
            true
        } else if ft.is_file() {
            false
        } else {
            continue; // sockets, fifos, devices
        };
        out.push((path, is_dir));
    }
    out.sort_by(|a, b| a.0.file_name().cmp(&b.0.file_name()));
    Ok(out)
}

/// All files under `dir`, recursively, in sorted order.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    for (path, is_dir) in sorted_entries(dir)? {
        if is_dir {
            files_under(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

fn concat_files(files: &[PathBuf], separator: &[u8]) -> Result<Vec<u8>, DataError> {
    let mut bytes = Vec::new();
    for (i, f) in files.iter().enumerate() {
        if i > 0 {
            bytes.extend_from_slice(separator);
        }
        let content = fs::read(f).map_err(|e| DataError::io("path", f, e))?;
        bytes.extend_from_slice(&content);
    }
    Ok(bytes)
}

fn name_of(path: &Path) -> String {
    let canonical = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    canonical
        .file_name()
        .or_else(|| path.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "textdir".to_string())
}

/// Reads the directory into domains (see the module doc).
pub(crate) fn load(
    root: &Path,
    separator: &[u8],
    split_by_subdir: bool,
    eval_fraction: f64,
    seq_len: usize,
) -> Result<Vec<TextDomain>, DataError> {
    match fs::metadata(root) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(DataError::invalid(
                "path",
                format!(
                    "directory not found: {} (kind = \"textdir\" needs a directory of text files)",
                    root.display()
                ),
            ))
        }
        Err(e) => return Err(DataError::io("path", root, e)),
        Ok(m) if !m.is_dir() => {
            return Err(DataError::invalid(
                "path",
                format!(
                    "{} is not a directory (kind = \"textdir\" needs a directory of text files)",
                    root.display()
                ),
            ))
        }
        Ok(_) => {}
    }
    let entries = sorted_entries(root)?;
    let root_name = name_of(root);
    // (name, files) per domain.
    let mut groups: Vec<(String, Vec<PathBuf>)> = Vec::new();
    if split_by_subdir {
        let root_files: Vec<PathBuf> = entries
            .iter()
            .filter(|e| !e.1)
            .map(|e| e.0.clone())
            .collect();
        let mut subdirs = Vec::new();
        for (path, _) in entries.iter().filter(|e| e.1) {
            let mut files = Vec::new();
            files_under(path, &mut files)?;
            if !files.is_empty() {
                subdirs.push((
                    path.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    files,
                ));
            }
        }
        if !subdirs.is_empty() {
            if !root_files.is_empty() {
                groups.push((root_name.clone(), root_files));
            }
            groups.extend(subdirs);
        }
    }
    if groups.is_empty() {
        let mut files = Vec::new();
        files_under(root, &mut files)?;
        if files.is_empty() {
            return Err(DataError::invalid(
                "path",
                format!(
                    "no files found under {} (hidden files are skipped)",
                    root.display()
                ),
            ));
        }
        groups.push((root_name, files));
    }
    let mut domains = Vec::with_capacity(groups.len());
    for (name, files) in groups {
        let bytes = concat_files(&files, separator)?;
        let n = bytes.len();
        let what = format!(
            "domain '{name}' under {} ({n} bytes in {} files)",
            root.display(),
            files.len()
        );
        let tokens = SplitTokens::new(
            Tokens::Bytes(bytes),
            train_len_for(n, eval_fraction),
            seq_len,
            "path",
            &what,
        )?;
        domains.push(TextDomain { name, tokens });
    }
    Ok(domains)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn flat_directory_is_one_domain_in_sorted_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("corpus");
        write(&root.join("b.txt"), "BBBB");
        write(&root.join("a.txt"), "AAAA");
        write(&root.join(".hidden"), "HHHH");
        let d = load(&root, b"|", false, 0.25, 1).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].name, "corpus");
        // "AAAA|BBBB" = 9 bytes, round(9 * 0.25) = 2 held out.
        assert_eq!(d[0].tokens.train_len(), 7);
        assert_eq!(d[0].tokens.eval_len(), 2);
        let mut out = Vec::new();
        d[0].tokens.eval_window(0, 1, 2, &mut out);
        assert_eq!(out, vec![b'B' as i64; 2]);
        out.clear();
        d[0].tokens
            .train_window(&mut crate::rng::Rng::new(0), 7, &mut out);
        assert_eq!(
            out,
            b"AAAA|BB".iter().map(|&b| b as i64).collect::<Vec<_>>()
        );
    }

    #[test]
    fn subdirectories_become_domains_and_nested_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        write(&root.join("zeta/x/deep.txt"), "zzzzzzzzzz");
        write(&root.join("alpha/one.txt"), "aaaaaaaaaa");
        write(&root.join("top.txt"), "tttttttttt");
        let d = load(&root, b"", true, 0.5, 3).unwrap();
        let names: Vec<&str> = d.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, vec!["root", "alpha", "zeta"]);
        let mut out = Vec::new();
        d[2].tokens
            .probe_window(&mut crate::rng::Rng::new(0), 4, &mut out);
        assert_eq!(out, vec![b'z' as i64; 4]);
        // Without splitting: one domain, files in sorted path order.
        let d = load(&root, b"", false, 0.5, 3).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].tokens.train_len(), 15);
    }

    #[test]
    fn bad_directories_give_one_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = load(&missing, b"", true, 0.1, 4).unwrap_err().to_string();
        assert!(e.starts_with("data.path: directory not found:"), "{e}");
        let empty = dir.path().join("empty");
        fs::create_dir(&empty).unwrap();
        let e = load(&empty, b"", true, 0.1, 4).unwrap_err().to_string();
        assert!(e.starts_with("data.path: no files found under"), "{e}");
        write(&empty.join("small.txt"), "abc");
        let e = load(&empty, b"", true, 0.1, 4).unwrap_err().to_string();
        assert!(
            e.contains("domain 'empty'") && e.contains("needs at least seq_len + 1 = 5"),
            "{e}"
        );
        let file = empty.join("small.txt");
        let e = load(&file, b"", true, 0.1, 4).unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");
    }
}
