#![no_main]
//! Fuzz target `replay_json`: see `portico::fuzzing::replay_json`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzzing::replay_json(data));
