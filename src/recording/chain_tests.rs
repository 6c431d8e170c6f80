//! Unit tests of `chain`.

use super::*;

/// A recording written in three flushes, and its chain file.
fn sample() -> (Vec<u8>, Vec<u8>) {
    let mut builder = ChainBuilder::default();
    let mut file = Vec::new();
    let mut chain = header_line("r-abc").into_bytes();
    for part in [&b"{\"version\":2}\n"[..], b"[0.1, \"o\", \"one\"]\n", b"[0.2, \"o\", \"two\"]\n"] {
        file.extend_from_slice(part);
        builder.written(part);
        chain.extend_from_slice(builder.link().unwrap().as_bytes());
        assert!(builder.link().is_none(), "no link without new bytes");
    }
    (file, chain)
}

#[test]
fn an_untouched_recording_checks_out_to_its_end() {
    let (file, chain) = sample();
    let checked = check(&chain, &file, "r-abc").unwrap();
    assert_eq!(checked.summary.links, 3);
    assert_eq!(checked.summary.covered, file.len() as u64);
    assert_eq!(checked.unverified_tail, 0);
    assert!(!checked.torn_line);
}

#[test]
fn an_edit_between_links_is_found_and_located() {
    let (mut file, chain) = sample();
    let at = file.windows(3).position(|w| w == b"two").unwrap();
    file[at] = b'T';
    let err = check(&chain, &file, "r-abc").unwrap_err();
    assert!(matches!(err, ChainError::Broken { to, .. } if to == file.len() as u64), "{err}");
}

#[test]
fn a_cut_inside_the_linked_part_is_found() {
    let (file, chain) = sample();
    let err = check(&chain, &file[..file.len() - 4], "r-abc").unwrap_err();
    assert!(matches!(err, ChainError::Cut { .. }), "{err}");
}

#[test]
fn a_tail_after_the_last_link_and_a_torn_line_are_reported_not_fatal() {
    let (mut file, mut chain) = sample();
    let tail = b"[0.3, \"o\", \"unlinked\"]\n";
    file.extend_from_slice(tail);
    chain.extend_from_slice(b"123 ab");
    let checked = check(&chain, &file, "r-abc").unwrap();
    assert_eq!(checked.summary.links, 3);
    assert_eq!(checked.unverified_tail, tail.len() as u64);
    assert!(checked.torn_line);
}

#[test]
fn another_recordings_chain_is_refused() {
    let (file, chain) = sample();
    assert!(matches!(check(&chain, &file, "r-xyz"), Err(ChainError::OtherRecording { .. })));
    assert_eq!(check(b"hello\n", &file, "r-abc"), Err(ChainError::Magic));
}

#[test]
fn damaged_lines_are_errors_not_panics() {
    let (file, chain) = sample();
    for cut in 0..chain.len() {
        let _ = check(&chain[..cut], &file, "r-abc");
    }
    let mut bad = header_line("r-abc").into_bytes();
    bad.extend_from_slice(b"99999999999999999999999 00\n");
    assert!(matches!(check(&bad, &file, "r-abc"), Err(ChainError::Line { line: 2 })));
    let mut backwards = chain.clone();
    backwards.extend_from_slice(link_line(1, &[0; 32]).as_bytes());
    assert!(matches!(check(&backwards, &file, "r-abc"), Err(ChainError::Line { line: 5 })));
}
