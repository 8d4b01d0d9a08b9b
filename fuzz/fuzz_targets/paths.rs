#![no_main]
//! Fuzz target `paths`: see `portico::fuzzing::paths`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzzing::paths(data));
