//! Unified diffs of what a resource changes (the `similar` crate). Text is diffed
//! line by line with three lines of context; content that is not text (not UTF-8,
//! or holding NUL bytes) is summarised by size and sha256 instead.

use similar::TextDiff;
use sloth_lua::artifact::hash_bytes;

/// Diffs longer than this are cut (the master keeps at most 1 MiB per change).
pub(crate) const MAX: usize = 256 * 1024;

/// A unified diff of `before` → `after` for `label` (a path), or `None` when they
/// are equal. A missing file is diffed as empty (`before` = `None`).
pub(crate) fn unified(label: &str, before: Option<&[u8]>, after: Option<&[u8]>) -> Option<String> {
    if before == after {
        return None;
    }
    fn text(b: Option<&[u8]>) -> Option<&str> {
        match b {
            None => Some(""),
            Some(b) if b.contains(&0) => None,
            Some(b) => std::str::from_utf8(b).ok(),
        }
    }
    let (old_name, new_name) = (
        if before.is_some() {
            label.to_string()
        } else {
            "/dev/null".into()
        },
        if after.is_some() {
            label.to_string()
        } else {
            "/dev/null".into()
        },
    );
    let out = match (text(before), text(after)) {
        (Some(a), Some(b)) => {
            let d = TextDiff::from_lines(a, b);
            let mut u = d.unified_diff();
            u.context_radius(3).header(
                &format!("before: {old_name}"),
                &format!("after: {new_name}"),
            );
            let mut s = u.to_string();
            if !s.ends_with('\n') {
                s.push('\n');
            }
            s
        }
        _ => format!(
            "--- before: {old_name}\n+++ after: {new_name}\nbinary content differs: {} -> {}\n",
            summary(before),
            summary(after)
        ),
    };
    Some(clip(out))
}

/// A one-line diff of a property (`mode`, `owner`, a symlink's target, a version).
pub(crate) fn property(label: &str, what: &str, before: &str, after: &str) -> String {
    format!("--- before: {label}\n+++ after: {label}\n-{what}: {before}\n+{what}: {after}\n")
}

fn summary(b: Option<&[u8]>) -> String {
    match b {
        None => "(none)".into(),
        Some(b) => format!(
            "{} bytes, sha256 {}",
            b.len(),
            super::outcome::short(&hash_bytes(b), 16)
        ),
    }
}

fn clip(mut s: String) -> String {
    sloth_proto::change::clip(&mut s, MAX);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_content_has_no_diff() {
        assert_eq!(unified("/x", Some(b"a\n"), Some(b"a\n")), None);
    }

    #[test]
    fn text_is_diffed_line_by_line_with_headers() {
        let d = unified("/etc/app.conf", Some(b"a\nb\nc\n"), Some(b"a\nB\nc\n")).unwrap();
        assert!(
            d.starts_with("--- before: /etc/app.conf\n+++ after: /etc/app.conf\n"),
            "{d}"
        );
        assert!(d.contains("\n-b\n+B\n"), "{d}");
        assert!(d.contains("@@ -1,3 +1,3 @@"), "{d}");
    }

    #[test]
    fn creation_and_removal_diff_against_dev_null() {
        let d = unified("/x", None, Some(b"new\n")).unwrap();
        assert!(
            d.starts_with("--- before: /dev/null\n+++ after: /x\n"),
            "{d}"
        );
        assert!(d.contains("+new\n"), "{d}");
        let d = unified("/x", Some(b"old\n"), None).unwrap();
        assert!(
            d.contains("+++ after: /dev/null\n") && d.contains("-old\n"),
            "{d}"
        );
    }

    #[test]
    fn binary_content_is_summarised() {
        let d = unified("/bin/x", Some(b"\x00\x01"), Some(b"\x00\x02\x03")).unwrap();
        assert!(
            d.contains("binary content differs: 2 bytes, sha256 "),
            "{d}"
        );
        assert!(d.contains("-> 3 bytes, sha256 "), "{d}");
    }

    #[test]
    fn long_diffs_are_cut() {
        let big = "x\n".repeat(MAX);
        let d = unified("/x", None, Some(big.as_bytes())).unwrap();
        assert!(d.len() < MAX + 100);
        assert!(d.ends_with("bytes cut]"), "{}", &d[d.len() - 40..]);
    }
}
