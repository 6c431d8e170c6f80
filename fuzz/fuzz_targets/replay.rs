//! `jit-gateway replay` on altered .cast, .exec.gz and .sftp.jsonl recordings (src/replay.rs).
//! The entry point is `jit_gateway::fuzz::replay` (src/fuzz.rs); any panic is a finding.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| jit_gateway::fuzz::replay(data));
