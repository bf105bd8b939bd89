//! AFL++ target: see `sloth_shared::fuzz_targets::agent_task`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        sloth_shared::fuzz_targets::agent_task(data);
    });
}
