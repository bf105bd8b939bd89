//! Resources that change system state, against the real programs, inside throwaway
//! containers (`common::container`: this machine's root tree under systemd-nspawn
//! with a tmpfs overlay, a real agent inside): users and groups (shadow utilities),
//! files owned by them, and check mode's promise over all of it. Packages are in
//! `pkg.rs`, services in `service.rs`.

mod common;

use common::container::{self, Container};
use common::*;

fn sh(c: &Container, script: &str) -> String {
    let out = c.sh(script);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The container's accounts and the file the script manages, to compare before and
/// after a check-mode run.
fn state(c: &Container) -> String {
    sh(
        c,
        "getent passwd slothusr; getent group slothgrp; id -Gn slothusr 2>&1; \
         stat -c '%U %G %a' /srv/sloth-owned 2>&1; ls -d /home/slothusr 2>&1",
    )
}

const ACCOUNTS: &str = r#"
local h = goroutine.async(function()
  local shell = vars.shell or "/bin/sh"
  local g = group.present{ name = "slothgrp", gid = 4242 }
  local u = user.present{ name = "slothusr", uid = 4243, groups = { "slothgrp" },
                          shell = shell, home = "/home/slothusr", comment = "sloth test" }
  local f = file.content{ path = "/srv/sloth-owned", content = "owned\n", owner = "slothusr",
                          group = "slothgrp", mode = "0640" }
  return g.changed, u.changed, u.action, f.changed
end, { delegate_to = "box", name = "accounts" })
print("r", goroutine.await(h))
"#;

/// Users, groups and a file owned by them: applied, re-applied (no change),
/// changed in place, planned exactly by check mode without touching the host, and
/// removed.
#[test]
fn users_and_groups_are_managed_idempotently() {
    if let Some(why) = container::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut fleet = TestFleet::empty();
    let c = Container::boot(&mut fleet, "box", &[]);
    let before = state(&c);
    assert!(before.contains("No such file"), "{before}");

    // Check mode over accounts that do not exist yet (the file's owner among them):
    // it plans, and the host is left as it was.
    let check = fleet.run(ACCOUNTS, &["--check", "--json"]);
    check.assert_code(0);
    assert_eq!(state(&c), before, "check mode changed the container");
    let planned = changed_set(&json(&check));

    let out = fleet.run(ACCOUNTS, &["--json"]);
    out.assert_code(0);
    let done = changed_set(&json(&out));
    assert_eq!(planned, done, "check mode and the real run disagree");
    assert_eq!(done.len(), 3, "{done:?}");
    assert_eq!(
        sh(&c, "getent passwd slothusr"),
        "slothusr:x:4243:4243:sloth test:/home/slothusr:/bin/sh"
    );
    assert_eq!(sh(&c, "getent group slothgrp"), "slothgrp:x:4242:slothusr");
    assert_eq!(
        sh(&c, "stat -c '%U %G %a' /srv/sloth-owned"),
        "slothusr slothgrp 640"
    );
    assert_eq!(sh(&c, "test -d /home/slothusr && echo home"), "home");

    let again = fleet.run(ACCOUNTS, &[]);
    again.assert_code(0);
    assert_eq!(again.line("r"), "true\tfalse\tfalse\tok\tfalse", "{again}");

    // One attribute changes: check says so, the real run does exactly that.
    let check = fleet.run(ACCOUNTS, &["-e", "shell=/bin/bash", "--check"]);
    assert_eq!(
        check.line("r"),
        "true\tfalse\ttrue\tshell /bin/sh -> /bin/bash\tfalse",
        "{check}"
    );
    assert!(sh(&c, "getent passwd slothusr").ends_with(":/bin/sh"));
    let out = fleet.run(ACCOUNTS, &["-e", "shell=/bin/bash"]);
    assert_eq!(
        out.line("r"),
        "true\tfalse\ttrue\tshell /bin/sh -> /bin/bash\tfalse"
    );
    assert!(sh(&c, "getent passwd slothusr").ends_with(":/bin/bash"));

    // Removal, then nothing left to remove.
    let remove = r#"
local h = goroutine.async(function()
  local u = user.absent{ name = "slothusr", remove_home = true }
  local g = group.absent("slothgrp")
  return u.changed, g.changed
end, { delegate_to = "box" })
print("r", goroutine.await(h))
"#;
    let check = fleet.run(remove, &["--check"]);
    assert_eq!(check.line("r"), "true\ttrue\ttrue");
    assert!(!sh(&c, "getent passwd slothusr").is_empty());
    assert_eq!(fleet.run(remove, &[]).line("r"), "true\ttrue\ttrue");
    assert_eq!(sh(&c, "getent passwd slothusr; getent group slothgrp"), "");
    assert_eq!(sh(&c, "test -e /home/slothusr || echo gone"), "gone");
    assert_eq!(fleet.run(remove, &[]).line("r"), "true\tfalse\tfalse");

    // The agent runs as root under systemd with no --audit-log: its audit log is in
    // the default place, private, with every task above on record.
    assert_eq!(
        sh(
            &c,
            "stat -c '%a %U' /var/log/sloth /var/log/sloth/audit.log"
        ),
        "700 root\n600 root"
    );
    let ends: usize = sh(
        &c,
        "grep -c '\"event\":\"task_end\"' /var/log/sloth/audit.log",
    )
    .parse()
    .unwrap();
    assert!(ends >= 7, "{ends} task_end lines");
}

/// Bad arguments are refused at the call, naming the argument, before anything
/// changes; a tool's own refusal comes back with its words.
#[test]
fn bad_account_arguments_are_named() {
    if let Some(why) = container::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut fleet = TestFleet::empty();
    let c = Container::boot(&mut fleet, "box", &[]);
    let out = fleet.run(
        r#"
local h = goroutine.async(function()
  for _, case in ipairs({
    { "name", function() user.present{ name = "-oops" } end },
    { "uid", function() user.present{ name = "ok1", uid = "many" } end },
    { "key", function() user.present{ name = "ok1", shel = "/bin/sh" } end },
    { "group", function() user.present{ name = "ok1", groups = { "no-such-group" } } end },
    { "gid", function() group.present{ name = "ok2", gid = -5 } end },
    { "taken", function() group.present{ name = "ok3", gid = 0 } end },
  }) do
    local ok, err = pcall(case[2])
    print(case[1], ok, err)
  end
end, { delegate_to = "box" })
goroutine.await(h)
"#,
        &[],
    );
    out.assert_code(0);
    let e = |t: &str| out.task_line(t);
    assert!(
        e("name").contains("option 'name' is not a valid user name: '-oops'"),
        "{out}"
    );
    assert!(
        e("uid").contains("option 'uid' must be a whole number, got string"),
        "{out}"
    );
    assert!(
        e("key").contains("unknown option 'shel' (did you mean 'shell'?)"),
        "{out}"
    );
    assert!(
        e("group").contains("group 'no-such-group' does not exist on this host"),
        "{out}"
    );
    assert!(
        e("gid").contains("option 'gid' is not a valid id: -5"),
        "{out}"
    );
    assert!(
        e("taken").contains(
            "groupadd -g 0 -- ok3 failed (exit code 4): groupadd: GID '0' already exists"
        ),
        "{out}"
    );
    assert_eq!(sh(&c, "getent passwd ok1; getent group ok2 ok3"), "");
}

/// Check mode and units systemd does not know: a misspelled unit is an error as in
/// the real run; one an earlier `service.unit` of the task would write is planned.
#[test]
fn check_mode_plans_only_units_that_would_exist() {
    if let Some(why) = container::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut fleet = TestFleet::empty();
    let _c = Container::boot(&mut fleet, "box", &[]);
    let out = fleet.run(
        r#"
local h = goroutine.async(function()
  print("typo", pcall(service.running, { name = "sloth-no-such-unit" }))
  service.unit{ name = "sloth-planned", content = "[Service]\nExecStart=/bin/sleep 600\n" }
  local r = service.running("sloth-planned")
  print("planned", r.changed, r.action)
end, { delegate_to = "box" })
assert(goroutine.await(h))
"#,
        &["--check"],
    );
    out.assert_code(0);
    assert!(
        out.task_line("typo").starts_with(
            "false\tservice.running sloth-no-such-unit: no such unit: systemd knows no sloth-no-such-unit.service"
        ),
        "{out}"
    );
    assert_eq!(
        out.task_line("planned"),
        "true\twould start (the unit does not exist yet)",
        "{out}"
    );
}

/// Check mode follows accounts an earlier resource of the same task would create or
/// remove: a repeated `present` is `ok`, a changed option is a change, and `absent`
/// of an account the task just created removes it. The set check mode reports is the
/// set the real run changes, and check mode leaves the container as it was.
#[test]
fn check_mode_follows_accounts_the_task_itself_creates_and_removes() {
    if let Some(why) = container::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut fleet = TestFleet::empty();
    let c = Container::boot(&mut fleet, "box", &[]);
    let script = r#"
local h = goroutine.async(function()
  local r = {}
  local function add(x) r[#r + 1] = x.resource .. " " .. x.target .. " " .. tostring(x.changed) end
  add(group.present{ name = "tg1", gid = 4301 })
  add(user.present{ name = "tu1", uid = 4302, shell = "/bin/sh" })
  add(group.present{ name = "tg1", gid = 4301 })
  add(user.present{ name = "tu1", uid = 4302, shell = "/bin/sh" })
  add(user.present{ name = "tu1", shell = "/bin/bash" })
  add(user.absent("tu1"))
  add(group.absent("tg1"))
  add(user.absent("tu1"))
  return table.concat(r, ";")
end, { delegate_to = "box", name = "accounts" })
print("r", select(2, goroutine.await(h)))
"#;
    let before = sh(&c, "getent passwd tu1; getent group tg1");
    assert_eq!(before, "");
    let check = fleet.run(script, &["--check"]);
    check.assert_code(0);
    assert_eq!(
        sh(&c, "getent passwd tu1; getent group tg1"),
        "",
        "check mode changed it"
    );
    let real = fleet.run(script, &[]);
    real.assert_code(0);
    let expected = "group.present tg1 true;user.present tu1 true;group.present tg1 false;\
                    user.present tu1 false;user.present tu1 true;user.absent tu1 true;\
                    group.absent tg1 true;user.absent tu1 false";
    assert_eq!(real.line("r"), expected, "{real}");
    assert_eq!(check.line("r"), expected, "{check}");
    assert_eq!(sh(&c, "getent passwd tu1; getent group tg1"), "");
}
