use super::*;

#[test]
fn a_version_2_preconnection_pdu_round_trips() {
    let pdu = encode_preconnection("jgwrdp1.abc.def");
    let (parsed, n) = parse_preconnection(&pdu).unwrap().unwrap();
    assert_eq!(n, pdu.len());
    assert_eq!(parsed.version, 2);
    assert_eq!(parsed.blob.as_deref(), Some("jgwrdp1.abc.def"));
    // Every shorter prefix asks for more bytes.
    for cut in 0..pdu.len() {
        assert_eq!(parse_preconnection(&pdu[..cut]), Ok(None), "prefix of {cut} bytes");
    }
}

#[test]
fn a_connection_request_instead_of_a_preconnection_pdu_is_named() {
    let request = encode_connection_request("admin", PROTOCOL_SSL);
    assert_eq!(parse_preconnection(&request), Err(WireError::NoPreconnection));
}

#[test]
fn lengths_that_lie_are_refused() {
    let mut pdu = encode_preconnection("x");
    pdu[0] = 8; // smaller than the header
    assert!(matches!(parse_preconnection(&pdu), Err(WireError::Preconnection(_))));
    let mut pdu = encode_preconnection("x");
    pdu[..4].copy_from_slice(&(1u32 << 20).to_le_bytes());
    assert!(matches!(parse_preconnection(&pdu), Err(WireError::Preconnection(_))));
    let mut pdu = encode_preconnection("xy");
    pdu[16] = 200; // more characters than the PDU holds
    assert!(matches!(parse_preconnection(&pdu), Err(WireError::Preconnection(_))));
}

#[test]
fn connection_requests_and_confirms_round_trip() {
    let frame = encode_connection_request("admin", PROTOCOL_SSL | PROTOCOL_HYBRID);
    assert_eq!(frame_len(&frame), Ok(Some(frame.len())));
    let parsed = parse_connection_request(&frame).unwrap();
    assert_eq!(parsed.cookie.as_deref(), Some("admin"));
    assert_eq!(parsed.requested_protocols, PROTOCOL_SSL | PROTOCOL_HYBRID);

    for confirm in [
        ConnectionConfirm::Selected { protocol: PROTOCOL_SSL, flags: 0x1f },
        ConnectionConfirm::Failure { code: SSL_REQUIRED_BY_SERVER },
    ] {
        let frame = encode_connection_confirm(confirm);
        assert_eq!(parse_connection_confirm(&frame), Ok(confirm));
    }
}

#[test]
fn a_request_without_negotiation_asks_for_standard_security() {
    // TPKT + X.224 CR with a cookie only (what very old clients send).
    let cookie = b"Cookie: mstshash=bob\r\n";
    let mut frame = vec![0x03, 0x00, 0x00, 0x00, (6 + cookie.len()) as u8, 0xe0, 0, 0, 0, 0, 0];
    frame.extend_from_slice(cookie);
    let len = frame.len() as u16;
    frame[2..4].copy_from_slice(&len.to_be_bytes());
    let parsed = parse_connection_request(&frame).unwrap();
    assert_eq!(parsed.requested_protocols, PROTOCOL_RDP);
    assert_eq!(parsed.cookie.as_deref(), Some("bob"));
}

#[test]
fn fast_path_lengths_are_read_in_one_or_two_bytes() {
    assert_eq!(frame_len(&[0x00, 0x05, 1, 2, 3]), Ok(Some(5)));
    assert_eq!(frame_len(&[0x00, 0x81, 0x00]), Ok(Some(256)));
    assert_eq!(frame_len(&[0x00, 0x81]), Ok(None));
    assert!(frame_len(&[0x01, 0x05]).is_err());
    assert!(frame_len(&[0x03, 0x01, 0, 9]).is_err());
}

#[test]
fn truncated_and_garbage_frames_are_errors_not_panics() {
    let frame = encode_connection_request("admin", PROTOCOL_SSL);
    for cut in 0..frame.len() {
        assert!(parse_connection_request(&frame[..cut]).is_err());
    }
    let mut state = 0x1234_5678u32;
    for _ in 0..20_000 {
        let len = (state % 64) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect();
        fuzz_one(&bytes);
    }
}
