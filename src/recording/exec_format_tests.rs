//! Unit tests of `exec_format`.

use super::*;

#[test]
fn frames_round_trip() {
    let mut buf = MAGIC.to_vec();
    encode_frame(&mut buf, Kind::Header, 0, b"{}");
    encode_frame(&mut buf, Kind::Stdout, 1_000, &[0, 159, 146, 150]);
    encode_frame(&mut buf, Kind::Stderr, 2_000, b"warning\n");
    let mut d = Decoder::new(buf.as_slice()).unwrap();
    assert_eq!(d.next_frame().unwrap().unwrap().kind, Kind::Header);
    let out = d.next_frame().unwrap().unwrap();
    assert_eq!((out.kind, out.elapsed_us, out.payload), (Kind::Stdout, 1_000, vec![0, 159, 146, 150]));
    assert_eq!(d.next_frame().unwrap().unwrap().payload, b"warning\n");
    assert!(d.next_frame().unwrap().is_none());
}

#[test]
fn corrupt_input_is_an_error_not_a_panic() {
    assert!(matches!(Decoder::new(&b"nope"[..]), Err(DecodeError::Magic)));
    let mut buf = MAGIC.to_vec();
    encode_frame(&mut buf, Kind::Stdout, 0, b"abcdef");
    buf.truncate(buf.len() - 2);
    let mut d = Decoder::new(buf.as_slice()).unwrap();
    assert!(d.next_frame().is_err());
    let mut huge = MAGIC.to_vec();
    huge.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    assert!(Decoder::new(huge.as_slice()).unwrap().next_frame().is_err());
    let mut unknown = MAGIC.to_vec();
    unknown.extend_from_slice(&[9; 13]);
    assert!(Decoder::new(unknown.as_slice()).unwrap().next_frame().is_err());
}
