#![no_main]
//! Fuzz target `response_head`: see `portico::fuzzing::response_head`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzzing::response_head(data));
