//! Replays the committed fuzz corpora and every crash the fuzzer found
//! (`shared/fuzz/corpus/TARGET/`, `shared/fuzz/regressions/TARGET/`) through the
//! same target functions AFL++ runs (`sloth_modules::fuzz_targets`).

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut seen = 0;
    for kind in ["corpus", "regressions"] {
        let dir = root.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let bytes = std::fs::read(e.path()).unwrap();
            let path = e.path();
            let r = std::panic::catch_unwind(|| run(&bytes));
            assert!(r.is_ok(), "{target} panics on {}", path.display());
            seen += 1;
        }
    }
    assert!(seen > 0, "no corpus for {target} under {}", root.display());
}

#[test]
fn frame_decoder_corpus() {
    replay("frame_decoder", sloth_modules::fuzz_targets::frame_decoder);
}

#[test]
fn agent_task_corpus() {
    replay("agent_task", sloth_modules::fuzz_targets::agent_task);
}

#[test]
fn master_data_corpus() {
    replay("master_data", sloth_modules::fuzz_targets::master_data);
}
