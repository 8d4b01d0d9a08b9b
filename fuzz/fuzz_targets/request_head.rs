#![no_main]
//! Fuzz target `request_head`: see `portico::fuzzing::request_head`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzzing::request_head(data));
