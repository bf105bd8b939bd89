//! Which functions of the main script take an options table, and with which keys (the
//! task library's own are `sloth_modules::options`): `sloth-master check` flags
//! unknown keys in literal tables given to them, and a test probes each one.

use sloth_lua::opts::OptionTable;

use crate::lua::args::TASK_KEYS;

/// Every master function that takes an options table (`OPTS`: its entries).
pub const OPTION_TABLES: &[OptionTable] = &[
    OptionTable {
        function: "goroutine.async",
        arg: 2,
        keys: TASK_KEYS,
        sample: "goroutine.async(function() end, { OPTS })",
    },
    OptionTable {
        function: "goroutine.spawn",
        arg: 2,
        keys: TASK_KEYS,
        sample: "goroutine.spawn(function() end, { OPTS })",
    },
    OptionTable {
        function: "goroutine.spawn_many",
        arg: 3,
        keys: TASK_KEYS,
        sample: "goroutine.spawn_many(1, function() end, { OPTS })",
    },
    OptionTable {
        function: "goroutine.timeout",
        arg: 3,
        keys: TASK_KEYS,
        sample: "goroutine.timeout('1s', function() end, { OPTS })",
    },
    OptionTable {
        function: "goroutine.pool_create",
        arg: 2,
        keys: &[
            "delegate_to",
            "queue",
            "retries",
            "retry_errors",
            "timeout",
            "workers",
        ],
        sample: "goroutine.pool_create('probe', { OPTS })",
    },
    OptionTable {
        function: "fleet.run",
        arg: 3,
        keys: &[
            "any_errors_fatal",
            "max_fail_percentage",
            "name",
            "retries",
            "retry_errors",
            "serial",
            "timeout",
        ],
        sample: "fleet.run('all', function() end, { OPTS })",
    },
];

/// Every master function that takes no options table.
pub const NO_OPTIONS: &[&str] = &[
    "goroutine.await",
    "goroutine.await_all",
    "goroutine.await_any",
    "goroutine.channel",
    "goroutine.mutex",
    "goroutine.once",
    "goroutine.semaphore",
    "goroutine.atomic_int",
    "goroutine.wait_group",
    "goroutine.pool_close",
    "goroutine.pool_stats",
    "goroutine.pool_submit",
    "goroutine.pool_wait",
    "goroutine.task_stats",
    "fleet.hosts",
    "fleet.info",
    "fleet.ping",
    "artifact.bytes",
    "artifact.file",
    "workflow.define",
    "workflow.run",
    "task",
];

/// The option tables of both the master and the task library.
pub fn all() -> impl Iterator<Item = &'static OptionTable> {
    OPTION_TABLES
        .iter()
        .chain(sloth_modules::options::OPTION_TABLES)
}
