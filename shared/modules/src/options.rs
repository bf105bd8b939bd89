//! Which functions of the task library take an options table, and with which keys:
//! `sloth-master check` flags unknown keys in literal tables given to them, and a test
//! probes each one (an unknown key must be refused, naming exactly these keys) and
//! checks that every function of every module is listed here or in [`NO_OPTIONS`].

use sloth_lua::opts::OptionTable;

macro_rules! table {
    ($f:expr, $arg:expr, [$($k:expr),* $(,)?], $sample:expr) => {
        OptionTable { function: $f, arg: $arg, keys: &[$($k),*], sample: $sample }
    };
}

/// Every function of the task library that takes an options table. In `sample`,
/// `OPTS` stands for the table's entries (the probe puts an unknown key there).
pub const OPTION_TABLES: &[OptionTable] = &[
    table!("exec.run", 2, ["cwd", "env", "read_only", "shell", "stdin", "stream", "timeout"], "exec.run('true', { OPTS })"),
    table!("exec.spawn", 2, ["cwd", "env", "log"], "exec.spawn('true', { OPTS })"),
    table!("fs.rm", 2, ["force", "recursive"], "fs.rm('/nonexistent/sloth-probe', { OPTS })"),
    table!("fs.symlink", 3, ["force"], "fs.symlink('/x', '/nonexistent/sloth-probe', { OPTS })"),
    table!("http.get", 2, ["follow_redirects", "headers", "insecure", "max_body", "read_only", "timeout"], "http.get('http://127.0.0.1:9/', { OPTS })"),
    table!("http.post", 3, ["follow_redirects", "headers", "insecure", "max_body", "read_only", "timeout"], "http.post('http://127.0.0.1:9/', 'x', { OPTS })"),
    table!("http.request", 1, ["body", "follow_redirects", "headers", "insecure", "max_body", "method", "read_only", "timeout", "url"], "http.request{ url = 'http://127.0.0.1:9/', OPTS }"),
    table!("json.encode", 2, ["pretty"], "json.encode({}, { OPTS })"),
    table!("template.render", 3, ["keep_trailing_newline", "lstrip_blocks", "name", "strict", "trim_blocks"], "template.render('x', {}, { OPTS })"),
    table!("handler", 3, ["on_failure"], "handler('probe', function() end, { OPTS })"),
    table!("file.content", 1, ["artifact", "content", "diff", "group", "mode", "notify", "owner", "parents", "path", "template", "template_name", "vars"], "file.content{ path = '/nonexistent/sloth-probe', content = 'x', OPTS }"),
    table!("file.directory", 1, ["diff", "group", "mode", "notify", "owner", "path"], "file.directory{ path = '/nonexistent/sloth-probe', OPTS }"),
    table!("file.symlink", 1, ["diff", "force", "group", "mode", "notify", "owner", "path", "target"], "file.symlink{ path = '/nonexistent/sloth-probe', target = '/x', OPTS }"),
    table!("file.absent", 1, ["diff", "notify", "path"], "file.absent{ path = '/nonexistent/sloth-probe', OPTS }"),
    table!("file.line", 1, ["create", "diff", "group", "line", "mode", "notify", "owner", "path", "regex", "state"], "file.line{ path = '/nonexistent/sloth-probe', line = 'x', OPTS }"),
    table!("file.block", 1, ["block", "create", "diff", "group", "marker", "mode", "notify", "owner", "path", "state"], "file.block{ path = '/nonexistent/sloth-probe', block = 'x', OPTS }"),
    table!("pkg.installed", 1, ["backend", "cache_valid", "diff", "lock_timeout", "name", "names", "notify", "refresh", "version"], "pkg.installed{ name = 'x', OPTS }"),
    table!("pkg.latest", 1, ["backend", "cache_valid", "diff", "lock_timeout", "name", "names", "notify", "refresh"], "pkg.latest{ name = 'x', OPTS }"),
    table!("pkg.absent", 1, ["backend", "diff", "lock_timeout", "name", "names", "notify", "purge"], "pkg.absent{ name = 'x', OPTS }"),
    table!("pkg.refreshed", 1, ["backend", "diff", "lock_timeout", "max_age", "notify"], "pkg.refreshed{ OPTS }"),
    table!("service.running", 1, ["backend", "command", "cwd", "diff", "enabled", "env", "log", "name", "notify", "pidfile", "reload_signal", "stop_timeout"], "service.running{ name = 'x', OPTS }"),
    table!("service.stopped", 1, ["backend", "command", "cwd", "diff", "enabled", "env", "log", "name", "notify", "pidfile", "reload_signal", "stop_timeout"], "service.stopped{ name = 'x', OPTS }"),
    table!("service.restarted", 1, ["backend", "command", "cwd", "diff", "env", "log", "name", "notify", "pidfile", "reload_signal", "stop_timeout"], "service.restarted{ name = 'x', OPTS }"),
    table!("service.reloaded", 1, ["backend", "command", "cwd", "diff", "env", "log", "name", "notify", "pidfile", "reload_signal", "stop_timeout"], "service.reloaded{ name = 'x', OPTS }"),
    table!("service.enabled", 1, ["backend", "diff", "name", "notify"], "service.enabled{ name = 'x', OPTS }"),
    table!("service.disabled", 1, ["backend", "diff", "name", "notify"], "service.disabled{ name = 'x', OPTS }"),
    table!("service.unit", 1, ["content", "diff", "enabled", "name", "notify", "template", "vars"], "service.unit{ name = 'x', content = 'x', OPTS }"),
    table!("user.present", 1, ["append", "comment", "create_home", "diff", "group", "groups", "home", "name", "notify", "shell", "system", "uid"], "user.present{ name = 'x', OPTS }"),
    table!("user.absent", 1, ["diff", "name", "notify", "remove_home"], "user.absent{ name = 'x', OPTS }"),
    table!("group.present", 1, ["diff", "gid", "name", "notify", "system"], "group.present{ name = 'x', OPTS }"),
    table!("group.absent", 1, ["diff", "name", "notify"], "group.absent{ name = 'x', OPTS }"),
    table!("cmd.run", 1, ["changed_when", "cmd", "creates", "cwd", "diff", "env", "notify", "only_if", "removes", "shell", "stdin", "stream", "timeout", "unless"], "cmd.run{ 'true', OPTS }"),
    table!("git.checkout", 1, ["dest", "diff", "force", "notify", "repo", "timeout", "version"], "git.checkout{ dest = '/nonexistent/sloth-probe', repo = '/x', OPTS }"),
    table!("archive.unpacked", 1, ["artifact", "dest", "diff", "force", "notify", "strip"], "archive.unpacked{ dest = '/nonexistent/sloth-probe', artifact = artifact.bytes('x'), OPTS }"),
];

/// Every function of the task library that takes no options table.
pub const NO_OPTIONS: &[&str] = &[
    "exec.alive",
    "exec.kill",
    "fs.append",
    "fs.chmod",
    "fs.copy",
    "fs.exists",
    "fs.ls",
    "fs.mkdir",
    "fs.read",
    "fs.readlink",
    "fs.stat",
    "fs.write",
    "json.decode",
    "log.debug",
    "log.error",
    "log.info",
    "log.warn",
    "print",
    "net.tcp_check",
    "sys.facts",
    "sys.hostname",
    "sys.monotonic_ms",
    "goroutine.select",
    "goroutine.sleep",
];

/// The members of the task library's modules that are values, not functions.
pub const FIELDS: &[&str] = &["json.null"];
