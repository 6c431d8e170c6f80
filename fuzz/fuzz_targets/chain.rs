//! `jit-gateway verify` and start-up recovery on an altered recording chain file (src/recording/chain.rs).
//! The entry point is `jit_gateway::fuzz::chain` (src/fuzz.rs); any panic is a finding.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| jit_gateway::fuzz::chain(data));
