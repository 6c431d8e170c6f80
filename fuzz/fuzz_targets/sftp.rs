//! The SFTP watcher on both directions of a channel (src/recording/sftp.rs).
//! The entry point is `jit_gateway::fuzz::sftp` (src/fuzz.rs); any panic is a finding.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| jit_gateway::fuzz::sftp(data));
