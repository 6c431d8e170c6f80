//! RDP recordings as read and rendered (src/recording/rdp_format.rs, src/rdp/replay.rs).
//! The entry point is `jit_gateway::fuzz::rdprec` (src/fuzz.rs); any panic is a finding.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| jit_gateway::fuzz::rdprec(data));
