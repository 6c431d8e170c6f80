//! Unit tests of RDP replay rendering.

use std::time::Duration;

use super::*;
use crate::recording::Stream;
use crate::recording::formats::Format;
use crate::recording::rdp_format::{RdpFormat, RdpHeader};

/// A Server Demand Active PDU (1280x1024 desktop) as freerdp-shadow sent it through the gateway.
const DEMAND_ACTIVE_HEX: [&str; 8] = [
    "0300018e02f08068000803eb70817f7f011100f103f103010004006901524450000e00000001001800000000000002000000",
    "001504000000000000010102001c00200001000100010000050004000001000100000e010000000300580000000000000000",
    "0000000000000000000000000001001400000001000000aa0001010100000000000100010000000000000001000000010000",
    "00000000000000000006000000000000840300000000000000000008000a000100140014000d005800290000000904000004",
    "000000000000000c000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000014000c00000000004006000009000800ea0300000e00080001",
    "0000001a000800004050001b00060003001900060001001c000c0052000000000000001d00330002122f777672bd6344afb3",
    "b73c9c6f788600040000000000b91b8dca0f004f15589fae2d1a87e2d6000400000000001e0008000000000000000000",
];
/// Where the Bitmap capability set's desktopWidth and desktopHeight sit in it.
const DESKTOP_SIZE_AT: usize = 61 + 12;

fn demand_active_pdu(width: u16, height: u16) -> Vec<u8> {
    let mut pdu = data_encoding::HEXLOWER.decode(DEMAND_ACTIVE_HEX.concat().as_bytes()).unwrap();
    pdu[DESKTOP_SIZE_AT..DESKTOP_SIZE_AT + 2].copy_from_slice(&width.to_le_bytes());
    pdu[DESKTOP_SIZE_AT + 2..DESKTOP_SIZE_AT + 4].copy_from_slice(&height.to_le_bytes());
    pdu
}

fn recording_of(pdu: &[u8]) -> Vec<u8> {
    let header = RdpHeader {
        version: 1,
        session: "s-1".into(),
        user: "alice@example.test".into(),
        target: "vm2".into(),
        login: "demo".into(),
        started_ms: 0,
        input_recorded: false,
    };
    let mut format = RdpFormat::new(&header);
    let mut file = Vec::new();
    format.data(Stream::Output, 1000, pdu, &mut file);
    format.finish(0, &mut file);
    file
}

#[test]
fn the_desktop_of_a_demand_active_is_rendered() {
    let mut frames = 0;
    let summary = render_with(&recording_of(&demand_active_pdu(1280, 1024)), Duration::from_millis(500), |image, _| {
        frames += 1;
        assert_eq!((image.width(), image.height()), (1280, 1024));
        Ok(None)
    })
    .unwrap();
    assert_eq!((summary.width, summary.height, summary.frames_written, frames), (1280, 1024, 1, 1));
}

#[test]
fn an_altered_recording_with_a_huge_desktop_is_refused_not_allocated() {
    // 65535 x 65535 x 4 bytes: replay used to abort on a 17 GB allocation.
    for (w, h) in [(65535, 65535), (8193, 8192), (32766, 4096)] {
        let err = render_with(&recording_of(&demand_active_pdu(w, h)), Duration::from_millis(500), |_, _| Ok(None))
            .unwrap_err();
        assert!(err.contains(&format!("declares a {w}x{h} desktop")), "{err}");
    }
    assert!(
        render_with(&recording_of(&demand_active_pdu(8192, 8192)), Duration::from_secs(1), |_, _| Ok(None)).is_ok()
    );
}
