//! AFL++ target: see `sloth_shared::fuzz_targets::frame_decoder`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        sloth_shared::fuzz_targets::frame_decoder(data);
    });
}
