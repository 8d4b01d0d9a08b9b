#![no_main]
//! Fuzz target `ws_frames`: see `portico::fuzzing::ws_frames`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzzing::ws_frames(data));
