//! AFL++ target: see `sloth_modules::fuzz_targets::agent_task`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        sloth_modules::fuzz_targets::agent_task(data);
    });
}
