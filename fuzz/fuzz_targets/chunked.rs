#![no_main]
//! Fuzz target `chunked`: see `portico::fuzzing::chunked`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzzing::chunked(data));
