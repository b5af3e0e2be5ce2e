#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshload_fuzzing::rest_request(data));
