//! The glob matcher of host patterns: `*` matches any run of characters (none too),
//! `?` exactly one character, every other character only itself. No classes, no
//! braces, no escapes: [`super::pattern`] admits only letters, digits, `-`, `.`, `_`,
//! `*` and `?` in a term.
//!
//! Why not a crate: both candidates were compared with [`glob_match`] on every pattern
//! of up to five characters over `a b - . _ * ?` against every name of up to four
//! characters over `a b - . _`, and neither gives these semantics exactly.
//! - `glob::Pattern` (0.3) is a path glob: it refuses a `**` that is not a whole path
//!   component, so `web-**` (here the same as `web-*`) would become an error; on the
//!   patterns it accepts it agrees with this matcher.
//! - `globset` (0.4) agrees on ASCII, but compiles to a byte regex where `?` matches one
//!   byte, not one character (`a?b` does not match `aéb`), and would bring a regex
//!   engine, aho-corasick and bstr into the master for these twenty lines.
//!
//! The tests below pin both differences.

/// Shell-style glob: `*` matches any run of characters, `?` exactly one.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn glob_matcher() {
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(glob_match("a*b", "abab"));
        assert!(!glob_match("a*b", "abac"));
        assert!(glob_match("??", "ab"));
        assert!(!glob_match("??", "abc"));
        assert!(!glob_match("web", "web-01"));
    }

    #[test]
    fn doubled_star_is_a_star() {
        // glob::Pattern refuses these.
        assert!(glob_match("web-**", "web-01"));
        assert!(glob_match("**-01", "web-01"));
        assert!(!glob_match("db**", "web-01"));
    }

    #[test]
    fn question_mark_is_one_character() {
        // globset's `?` is one byte.
        assert!(glob_match("a?b", "aéb"));
        assert!(!glob_match("a??b", "aéb"));
    }
}
