//! Unified diffs of what a resource changes (the `similar` crate). Text is diffed
//! line by line with three lines of context; content that is not text (not UTF-8,
//! or holding NUL bytes), or too big to diff, is summarised by size and sha256
//! instead.

use std::time::Duration;

use similar::TextDiff;
use sloth_lua::artifact::hash_bytes;

/// Diffs longer than this are cut (the master keeps at most 1 MiB per change).
pub(crate) const MAX: usize = 256 * 1024;
/// Content bigger than this (on either side) is summarised, not diffed.
pub(crate) const MAX_INPUT: usize = 16 << 20;
/// A line diff that takes longer than this settles for a coarser one.
const DIFF_TIME: Duration = Duration::from_secs(2);

/// A unified diff of `before` → `after` for `label` (a path), or `None` when they
/// are equal. A missing file is diffed as empty (`before` = `None`).
pub(crate) fn unified(label: &str, before: Option<&[u8]>, after: Option<&[u8]>) -> Option<String> {
    if before == after {
        return None;
    }
    fn text(b: Option<&[u8]>) -> Option<&str> {
        match b {
            None => Some(""),
            Some(b) if b.len() > MAX_INPUT || b.contains(&0) => None,
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
            let d = TextDiff::configure().timeout(DIFF_TIME).diff_lines(a, b);
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
            "--- before: {old_name}\n+++ after: {new_name}\n{} content differs: {} -> {}\n",
            if before.is_some_and(|b| b.len() > MAX_INPUT)
                || after.is_some_and(|b| b.len() > MAX_INPUT)
            {
                "big"
            } else {
                "binary"
            },
            summary(before),
            summary(after)
        ),
    };
    Some(clip(out))
}

/// The diff of an existing file whose old content was not read (bigger than
/// [`MAX_INPUT`]) replaced by `after`.
pub(crate) fn unread_before(label: &str, old_size: u64, after: &str) -> String {
    format!("--- before: {label}\n+++ after: {label}\nbig content differs: {old_size} bytes -> {after}\n")
}

/// A one-line diff of a property (`mode`, `owner`, a symlink's target, a version).
pub(crate) fn property(label: &str, what: &str, before: &str, after: &str) -> String {
    properties(label, &[(what, before.to_string(), after.to_string())])
}

/// The diff of several properties of one thing: each before, then each after.
pub(crate) fn properties(label: &str, props: &[(&str, String, String)]) -> String {
    let mut s = format!("--- before: {label}\n+++ after: {label}\n");
    for (what, before, _) in props {
        s.push_str(&format!("-{what}: {before}\n"));
    }
    for (what, _, after) in props {
        s.push_str(&format!("+{what}: {after}\n"));
    }
    s
}

/// A content diff followed by the diff of the attributes that change with it.
pub(crate) fn with_properties(
    content: Option<String>,
    label: &str,
    props: &[(&str, String, String)],
) -> Option<String> {
    if props.is_empty() {
        return content;
    }
    let mut s = content.unwrap_or_default();
    s.push_str(&properties(label, props));
    Some(s)
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
    fn big_content_is_summarised_and_a_big_file_is_never_shown_as_created() {
        let mut old = "line\n".repeat(60_000);
        let new = old.replacen("line\n", "LINE\n", 1);
        // Over the diff's own cap, under the input cap: a real hunk.
        let d = unified("/x", Some(old.as_bytes()), Some(new.as_bytes())).unwrap();
        assert!(d.starts_with("--- before: /x\n+++ after: /x\n"), "{d}");
        assert!(d.contains("-line\n+LINE\n"), "{d}");
        old.push_str(&"y".repeat(MAX_INPUT));
        let d = unified("/x", Some(old.as_bytes()), Some(b"small\n")).unwrap();
        assert!(d.starts_with("--- before: /x\n+++ after: /x\n"), "{d}");
        assert!(
            d.contains("big content differs: 17077216 bytes, sha256 "),
            "{d}"
        );
        assert!(d.contains("-> 6 bytes, sha256 "), "{d}");
    }

    #[test]
    fn long_diffs_are_cut() {
        let big = "x\n".repeat(MAX);
        let d = unified("/x", None, Some(big.as_bytes())).unwrap();
        assert!(d.len() < MAX + 100);
        assert!(d.ends_with("bytes cut]"), "{}", &d[d.len() - 40..]);
    }
}
