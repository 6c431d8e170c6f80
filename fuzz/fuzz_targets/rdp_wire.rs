//! Fuzzes what an unauthenticated RDP client reaches first: the
//! pre-connection PDU and X.224 parsing (`src/rdp/wire.rs`, compiled in
//! directly so the fuzz build stays small). Any panic is a finding.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/rdp/wire.rs"]
mod wire;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wire::fuzz_one(data);
    // Whatever parses must survive being re-encoded and parsed again.
    if let Ok(Some((pdu, _))) = wire::parse_preconnection(data)
        && let Some(blob) = pdu.blob
    {
        let again = wire::encode_preconnection(&blob);
        let (back, n) = wire::parse_preconnection(&again).expect("own encoding parses").expect("complete");
        assert_eq!(n, again.len());
        assert_eq!(back.blob.as_deref(), Some(blob.as_str()));
    }
    if let Ok(request) = wire::parse_connection_request(data) {
        let again = wire::encode_connection_request(request.cookie.as_deref().unwrap_or(""), request.requested_protocols);
        assert_eq!(wire::parse_connection_request(&again).map(|r| r.requested_protocols), Ok(request.requested_protocols));
    }
});
