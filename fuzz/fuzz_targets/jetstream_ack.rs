#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ansible_runner_nats::fuzzing::jetstream_ack(data));
