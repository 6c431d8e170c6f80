//! The RDP pre-connection PDU and X.224 negotiation (src/rdp/wire.rs).
//! The entry point is `jit_gateway::fuzz::rdp_wire` (src/fuzz.rs); any panic is a finding.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| jit_gateway::fuzz::rdp_wire(data));
