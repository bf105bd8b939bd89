//! AFL++ target: see `sloth_modules::fuzz_targets::frame_decoder`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        sloth_modules::fuzz_targets::frame_decoder(data);
    });
}
