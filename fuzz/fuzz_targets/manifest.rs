//! `jit-gateway verify` on an altered recording manifest (src/recording/seal.rs).
//! The entry point is `jit_gateway::fuzz::manifest` (src/fuzz.rs); any panic is a finding.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| jit_gateway::fuzz::manifest(data));
