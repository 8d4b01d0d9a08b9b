#![no_main]
//! Fuzz target `replay_header`: see `portico::fuzzing::replay_header`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzzing::replay_header(data));
