//! API bearer tokens, RDP tickets, redirect URIs and request bodies (src/api, src/rdp/ticket.rs).
//! The entry point is `jit_gateway::fuzz::api_input` (src/fuzz.rs); any panic is a finding.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| jit_gateway::fuzz::api_input(data));
