//! AFL++ target: see `sloth_shared::fuzz_targets::master_data`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        sloth_shared::fuzz_targets::master_data(data);
    });
}
