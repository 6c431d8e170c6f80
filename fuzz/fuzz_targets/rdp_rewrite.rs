//! The RDP relay's framing and PDU rewriting (src/rdp/rewrite.rs).
//! The entry point is `jit_gateway::fuzz::rdp_rewrite` (src/fuzz.rs); any panic is a finding.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| jit_gateway::fuzz::rdp_rewrite(data));
