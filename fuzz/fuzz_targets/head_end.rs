#![no_main]
//! Fuzz target `head_end`: see `portico::fuzzing::head_end`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzzing::head_end(data));
