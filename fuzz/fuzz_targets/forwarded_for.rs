#![no_main]
//! Fuzz target `forwarded_for`: see `portico::fuzzing::forwarded_for`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| portico::fuzzing::forwarded_for(data));
