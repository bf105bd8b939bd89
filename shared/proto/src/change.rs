//! What resources report: one [`Change`] per resource call (changed or not) and per
//! handler that ran, streamed from the host to the master as the task goes, and the
//! [`Mode`] a task runs in (check mode, diffs). Pure data; the master bounds what an
//! agent sends with [`Change::clipped`].

use serde::{Deserialize, Serialize};

/// How a task's resources behave.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mode {
    /// Work out what would change and change nothing (`run --check`).
    pub check: bool,
    /// Compute before/after diffs of what changes (`run --diff`).
    pub diff: bool,
}

/// What reported a [`Change`].
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A resource call (`file.content`, `pkg.installed`, ...).
    Resource,
    /// A handler the task's resources notified: `action` says whether it ran, would
    /// run (check mode) or failed.
    Handler,
}

/// The outcome of one resource call, or of one handler.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: ChangeKind,
    /// The resource (`file.content`) or `handler`.
    pub resource: String,
    /// What it manages: a path, a package, a unit, a user; a handler's name.
    pub target: String,
    /// Something changed (in check mode: would change).
    pub changed: bool,
    /// What was done, in a few words (`created`, `updated`, `installed 1.2-1`, `ok`).
    pub action: String,
    /// A unified diff of the change, when diffs were asked for and one applies.
    pub diff: Option<String>,
    /// Made in check mode: nothing was changed.
    pub check: bool,
    /// A handler that failed: why (the task fails too).
    pub error: Option<String>,
}

/// Longest resource name, target or action the master keeps (bytes).
pub const MAX_CHANGE_FIELD: usize = 4 * 1024;
/// Longest diff the master keeps for one change (bytes).
pub const MAX_DIFF: usize = 1024 * 1024;

impl Change {
    /// This change with every field cut to the master's limits (a diff over
    /// [`MAX_DIFF`] keeps its start and a note of what was cut). Used on every change
    /// that comes off the network.
    pub fn clipped(mut self) -> Change {
        clip(&mut self.resource, MAX_CHANGE_FIELD);
        clip(&mut self.target, MAX_CHANGE_FIELD);
        clip(&mut self.action, MAX_CHANGE_FIELD);
        if let Some(e) = self.error.as_mut() {
            clip(e, MAX_CHANGE_FIELD);
        }
        if let Some(d) = self.diff.as_mut() {
            clip(d, MAX_DIFF);
        }
        self
    }

    /// `resource target`, the way messages name a change.
    pub fn label(&self) -> String {
        format!("{} {}", self.resource, self.target)
    }
}

/// Cut `s` to at most `max` bytes on a character boundary, noting how much went.
pub fn clip(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let cut = s.len() - end;
    s.truncate(end);
    s.push_str(&format!(" [... {cut} bytes cut]"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(target: &str, diff: Option<String>) -> Change {
        Change {
            kind: ChangeKind::Resource,
            resource: "file.content".into(),
            target: target.into(),
            changed: true,
            action: "updated".into(),
            diff,
            check: false,
            error: None,
        }
    }

    #[test]
    fn clipping_keeps_small_changes_whole() {
        let c = change("/etc/app.conf", Some("-a\n+b\n".into()));
        assert_eq!(c.clone().clipped(), c);
        assert_eq!(c.label(), "file.content /etc/app.conf");
    }

    #[test]
    fn clipping_bounds_every_field_on_a_char_boundary() {
        let long = "é".repeat(MAX_CHANGE_FIELD);
        let c = change(&long, Some("x".repeat(MAX_DIFF + 10))).clipped();
        assert!(c.target.len() < MAX_CHANGE_FIELD + 40, "{}", c.target.len());
        assert!(c.target.ends_with("bytes cut]"));
        let d = c.diff.expect("diff kept");
        assert!(d.len() < MAX_DIFF + 40);
        assert!(d.ends_with("[... 10 bytes cut]"), "{}", &d[d.len() - 30..]);
    }
}
