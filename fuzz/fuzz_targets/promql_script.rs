#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshload_fuzzing::promql_script(data));
