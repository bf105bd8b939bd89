//! AFL++ target: see `sloth_modules::fuzz_targets::master_data`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        sloth_modules::fuzz_targets::master_data(data);
    });
}
