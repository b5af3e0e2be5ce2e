#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshload_fuzzing::config_json(data));
