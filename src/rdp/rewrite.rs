//! The relay after TLS: whole PDUs both ways, with a few of them rewritten.
//!
//! Client to target:
//! - MCS Connect-Initial: `serverSelectedProtocol` becomes what the target
//!   chose (the client was told TLS); clipboard (`cliprdr`) and drive
//!   (`rdpdr`) channels the grant does not allow are renamed so the target
//!   never starts them, and their traffic is dropped both ways; the GFX
//!   pipeline flag is cleared so the session draws with bitmap updates that
//!   replay can decode.
//! - Client Info PDU: the target's configured account replaces whatever the
//!   user typed (so the user never needs, or sees, the password); bulk
//!   compression is turned off. The recording gets a copy without password.
//! - Confirm Active: drawing orders and bitmap codecs are not offered, for
//!   the same reason as GFX.
//! - Fast-path input (keyboard, mouse) is left out of the recording unless
//!   `rdp.record_keystrokes`.
//!
//! Target to client: the MCS Connect-Response gets back the protocols the
//! client asked for (`clientRequestedProtocols`), which clients check.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ironrdp_core::{decode, encode_vec};
use ironrdp_pdu::gcc::{ChannelName, ClientEarlyCapabilityFlags, ConferenceCreateRequest, ConferenceCreateResponse};
use ironrdp_pdu::mcs::{ConnectInitial, ConnectResponse, McsMessage, SendDataRequest};
use ironrdp_pdu::nego::SecurityProtocol;
use ironrdp_pdu::rdp::ClientInfoPdu;
use ironrdp_pdu::rdp::capability_sets::{CapabilitySet, Order, OrderFlags, OrderSupportExFlags};
use ironrdp_pdu::rdp::client_info::{ClientInfoFlags, CompressionType};
use ironrdp_pdu::rdp::headers::{BasicSecurityHeaderFlags, ShareControlHeader, ShareControlPdu};
use ironrdp_pdu::x224::{X224, X224Data};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::{keep, send, wire};
use crate::config::RdpCredential;
use crate::gateway::Gateway;
use crate::recording::{Recorder, Stream};
use crate::store::blocking;

/// Redirections a grant allows (everything else is dropped).
#[derive(Debug, Clone, Copy, Default)]
pub struct Allowances {
    pub clipboard: bool,
    pub drives: bool,
}

impl Allowances {
    pub async fn from_grant(gateway: &Gateway, grant_id: &str) -> Allowances {
        let id = grant_id.to_string();
        let grant = blocking(&gateway.store, move |s| s.grant(&id)).await.ok().flatten();
        let allowed = grant.map(|g| g.rdp_redirect).unwrap_or_default();
        Allowances { clipboard: allowed.iter().any(|a| a == "clipboard"), drives: allowed.iter().any(|a| a == "drives") }
    }

    fn blocks(&self, channel: &str) -> bool {
        let name = channel.to_ascii_lowercase();
        (!self.clipboard && name == "cliprdr") || (!self.drives && name == "rdpdr")
    }
}

pub struct Upstream {
    pub target_selected: u32,
    pub credential: Option<(RdpCredential, crate::secret::Secret<String>)>,
    pub allow: Allowances,
    pub record_input: bool,
}

/// Channels whose traffic is dropped, by MCS channel ID, once the target has assigned them.
#[derive(Default)]
pub struct Blocked {
    /// Positions (in the client's channel list) of blocked channels.
    positions: Vec<usize>,
    ids: Vec<u16>,
}

pub type SharedBlocked = Arc<Mutex<Blocked>>;

fn blocked_id(blocked: &SharedBlocked, channel: u16) -> bool {
    blocked.lock().map(|b| b.ids.contains(&channel)).unwrap_or(true)
}

fn protocol(bits: u32) -> SecurityProtocol {
    SecurityProtocol::from_bits_truncate(bits)
}

/// Rewrites the MCS Connect-Initial. Returns the new frame and an audit record of the channel decisions.
pub fn connect_initial(frame: &[u8], target_selected: u32, allow: Allowances, blocked: &SharedBlocked) -> Result<(Vec<u8>, serde_json::Value), String> {
    let err = |e: &dyn std::fmt::Display| format!("cannot read the client's MCS Connect-Initial: {e}");
    let payload = decode::<X224<X224Data<'_>>>(frame).map_err(|e| err(&e))?.0.data;
    let mut ci: ConnectInitial = decode(payload.as_ref()).map_err(|e| err(&e))?;
    let mut blocks = ci.conference_create_request.gcc_blocks().clone();
    let o = &mut blocks.core.optional_data;
    if o.server_selected_protocol.is_some() {
        o.server_selected_protocol = Some(protocol(target_selected));
    }
    if let Some(flags) = o.early_capability_flags.as_mut() {
        flags.remove(ClientEarlyCapabilityFlags::SUPPORT_DYN_VC_GFX_PROTOCOL);
    }
    let (mut kept, mut dropped) = (Vec::new(), Vec::new());
    if let Some(net) = blocks.network.as_mut() {
        let mut positions = Vec::new();
        for (i, channel) in net.channels.iter_mut().enumerate() {
            let name = channel.name.as_str().unwrap_or("?").to_string();
            if allow.blocks(&name) {
                // Renamed, not removed: the target assigns IDs by position, and the client maps them back the same way.
                channel.name = ChannelName::from_static(b"jgwoff\0\0");
                positions.push(i);
                dropped.push(name);
            } else {
                kept.push(name);
            }
        }
        if let Ok(mut b) = blocked.lock() {
            b.positions = positions;
        }
    }
    ci.conference_create_request = ConferenceCreateRequest::new(blocks).map_err(|e| err(&e))?;
    let body = encode_vec(&ci).map_err(|e| err(&e))?;
    let frame = encode_vec(&X224(X224Data { data: Cow::Owned(body) })).map_err(|e| err(&e))?;
    let decision = serde_json::json!({"channels_kept": kept, "channels_dropped": dropped,
                                      "clipboard": allow.clipboard, "drives": allow.drives});
    Ok((frame, decision))
}

/// The GCC node ID in a Connect-Response (no getter for it in ironrdp-pdu):
/// PER bytes before the "McDn" key are `14 | nodeID-1001 (u16 BE) | 01 01 00 01 c0 00`.
fn node_id(mcs: &[u8]) -> Option<u16> {
    let p = mcs.windows(4).position(|w| w == b"McDn")?;
    let s = mcs.get(p.checked_sub(9)?..p)?;
    (s[0] == 0x14 && s[3..] == [1u8, 1, 0, 1, 0xc0, 0]).then(|| u16::from_be_bytes([s[1], s[2]]).wrapping_add(1001))
}

/// Rewrites the MCS Connect-Response and learns the IDs of blocked channels.
pub fn connect_response(frame: &[u8], client_requested: u32, blocked: &SharedBlocked) -> Result<Vec<u8>, String> {
    let err = |e: &dyn std::fmt::Display| format!("cannot read the target's MCS Connect-Response: {e}");
    let payload = decode::<X224<X224Data<'_>>>(frame).map_err(|e| err(&e))?.0.data;
    let mut cr: ConnectResponse = decode(payload.as_ref()).map_err(|e| err(&e))?;
    let user_id = node_id(payload.as_ref()).ok_or_else(|| err(&"no GCC node ID"))?;
    let mut blocks = cr.conference_create_response.gcc_blocks().clone();
    if let Ok(mut b) = blocked.lock() {
        let ids: Vec<u16> = b.positions.iter().filter_map(|&i| blocks.network.channel_ids.get(i).copied()).collect();
        b.ids = ids;
    }
    if blocks.core.optional_data.client_requested_protocols.is_some() {
        blocks.core.optional_data.client_requested_protocols = Some(protocol(client_requested));
    }
    cr.conference_create_response = ConferenceCreateResponse::new(user_id, blocks).map_err(|e| err(&e))?;
    let body = encode_vec(&cr).map_err(|e| err(&e))?;
    encode_vec(&X224(X224Data { data: Cow::Owned(body) })).map_err(|e| err(&e))
}

/// A rewritten Client Info PDU: the frame to send and the frame to record.
type ClientInfoFrames = (Vec<u8>, Vec<u8>);

/// The Client Info PDU, if `frame` is one.
pub fn client_info(frame: &[u8], credential: Option<(&RdpCredential, &str)>) -> Option<Result<ClientInfoFrames, String>> {
    let X224(McsMessage::SendDataRequest(req)) = decode::<X224<McsMessage<'_>>>(frame).ok()? else { return None };
    let data: &[u8] = req.user_data.as_ref();
    if data.len() < 4 {
        return None;
    }
    let flags = BasicSecurityHeaderFlags::from_bits_truncate(u16::from_le_bytes([data[0], data[1]]));
    if !flags.contains(BasicSecurityHeaderFlags::INFO_PKT) {
        return None;
    }
    let mut pdu = decode::<ClientInfoPdu>(data).ok()?;
    let info = &mut pdu.client_info;
    if let Some((cred, password)) = credential {
        info.credentials.username = cred.username.clone();
        info.credentials.password = password.to_string();
        info.credentials.domain = (!cred.domain.is_empty()).then(|| cred.domain.clone());
        info.password_cookie = None;
        info.flags.insert(ClientInfoFlags::AUTOLOGON);
    }
    info.flags.remove(ClientInfoFlags::COMPRESSION);
    info.compression_type = CompressionType::K8;
    let encode = |pdu: &ClientInfoPdu| -> Result<Vec<u8>, String> {
        let user_data = encode_vec(pdu).map_err(|e| format!("cannot encode the Client Info PDU: {e}"))?;
        encode_vec(&X224(SendDataRequest { initiator_id: req.initiator_id, channel_id: req.channel_id, user_data: Cow::Owned(user_data) }))
            .map_err(|e| format!("cannot encode the Client Info PDU: {e}"))
    };
    let sent = match encode(&pdu) {
        Ok(f) => f,
        Err(e) => return Some(Err(e)),
    };
    let mut redacted = pdu;
    redacted.client_info.credentials.password.clear();
    redacted.client_info.password_cookie = None;
    Some(encode(&redacted).map(|r| (sent, r)))
}

/// A Confirm Active PDU without drawing orders and bitmap codecs, if `frame` is one.
pub fn confirm_active(frame: &[u8]) -> Option<Vec<u8>> {
    let X224(McsMessage::SendDataRequest(req)) = decode::<X224<McsMessage<'_>>>(frame).ok()? else { return None };
    let mut header = decode::<ShareControlHeader>(req.user_data.as_ref()).ok()?;
    let ShareControlPdu::ClientConfirmActive(confirm) = &mut header.share_control_pdu else { return None };
    confirm.pdu.capability_sets.retain(|c| !matches!(c, CapabilitySet::BitmapCodecs(_)));
    for set in confirm.pdu.capability_sets.iter_mut() {
        if let CapabilitySet::Order(order) = set {
            *order = Order::new(
                OrderFlags::NEGOTIATE_ORDER_SUPPORT | OrderFlags::ZERO_BOUNDS_DELTAS_SUPPORT,
                OrderSupportExFlags::empty(),
                0,
                0,
            );
        }
    }
    let user_data = encode_vec(&header).ok()?;
    encode_vec(&X224(SendDataRequest { initiator_id: req.initiator_id, channel_id: req.channel_id, user_data: Cow::Owned(user_data) })).ok()
}

/// The MCS channel of a TPKT data frame (either direction).
fn data_channel(frame: &[u8]) -> Option<u16> {
    match decode::<X224<McsMessage<'_>>>(frame).ok()?.0 {
        McsMessage::SendDataRequest(r) => Some(r.channel_id),
        McsMessage::SendDataIndication(i) => Some(i.channel_id),
        _ => None,
    }
}

/// Reads whole PDUs off `r` into `buf`; `None` at a clean end.
async fn next_frame<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>, side: &str) -> Result<Option<Vec<u8>>, String> {
    loop {
        match wire::frame_len(buf) {
            Ok(Some(n)) if buf.len() >= n => return Ok(Some(buf.drain(..n).collect())),
            Ok(_) => {}
            Err(e) => return Err(format!("{side} sent a malformed PDU: {e}")),
        }
        let mut chunk = vec![0u8; 64 << 10];
        let n = r.read(&mut chunk).await.map_err(|e| format!("{side} connection failed: {e}"))?;
        if n == 0 {
            return if buf.is_empty() { Ok(None) } else { Err(format!("{side} closed the connection mid-PDU")) };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[derive(PartialEq)]
enum Phase {
    ConnectInitial,
    ClientInfo,
    ConfirmActive,
    Relay,
}

pub async fn client_to_target<R, W>(
    mut r: R,
    mut w: W,
    up: Upstream,
    recorder: Option<Arc<Recorder>>,
    decisions: Arc<Mutex<Vec<serde_json::Value>>>,
    blocked: SharedBlocked,
) -> Result<(), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let credential = up.credential.as_ref().map(|(c, p)| (c, p.expose().as_str()));
    let mut phase = Phase::ConnectInitial;
    let mut buf = Vec::new();
    while let Some(frame) = next_frame(&mut r, &mut buf, "the client").await? {
        let tpkt = wire::is_tpkt(&frame);
        let (sent, recorded): (Cow<'_, [u8]>, Option<Cow<'_, [u8]>>) = match phase {
            Phase::ConnectInitial if tpkt => {
                let (rewritten, decision) = connect_initial(&frame, up.target_selected, up.allow, &blocked)?;
                if let Ok(mut d) = decisions.lock() {
                    d.push(decision);
                }
                phase = Phase::ClientInfo;
                (Cow::Owned(rewritten.clone()), Some(Cow::Owned(rewritten)))
            }
            Phase::ClientInfo if tpkt => match client_info(&frame, credential) {
                Some(result) => {
                    let (sent, redacted) = result?;
                    phase = Phase::ConfirmActive;
                    (Cow::Owned(sent), Some(Cow::Owned(redacted)))
                }
                None => (Cow::Borrowed(&frame[..]), Some(Cow::Borrowed(&frame[..]))),
            },
            Phase::ConfirmActive | Phase::Relay if tpkt => {
                if data_channel(&frame).is_some_and(|c| blocked_id(&blocked, c)) {
                    continue;
                }
                match confirm_active(&frame) {
                    Some(rewritten) => {
                        phase = Phase::Relay;
                        (Cow::Owned(rewritten.clone()), Some(Cow::Owned(rewritten)))
                    }
                    None => (Cow::Borrowed(&frame[..]), Some(Cow::Borrowed(&frame[..]))),
                }
            }
            // Fast-path from a client is input: keys and mouse.
            _ => (Cow::Borrowed(&frame[..]), up.record_input.then(|| Cow::Borrowed(&frame[..]))),
        };
        if let Some(rec) = recorded {
            keep(&recorder, Stream::Input, Bytes::copy_from_slice(&rec)).await?;
        }
        send(&mut w, &sent, "the target").await?;
    }
    Ok(())
}

pub async fn target_to_client<R, W>(mut r: R, mut w: W, client_requested: u32, recorder: Option<Arc<Recorder>>, blocked: SharedBlocked) -> Result<(), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut first = true;
    let mut buf = Vec::new();
    while let Some(frame) = next_frame(&mut r, &mut buf, "the target").await? {
        let out = if first && wire::is_tpkt(&frame) {
            first = false;
            connect_response(&frame, client_requested, &blocked)?
        } else {
            if wire::is_tpkt(&frame) && data_channel(&frame).is_some_and(|c| blocked_id(&blocked, c)) {
                continue;
            }
            frame
        };
        keep(&recorder, Stream::Output, Bytes::from(out.clone())).await?;
        send(&mut w, &out, "the client").await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_id_is_read_before_the_mcdn_key() {
        // 14 | 0x0000 (node 1001) | 01 01 00 01 c0 00 | "McDn"
        let bytes = [0xffu8, 0x14, 0x00, 0x00, 0x01, 0x01, 0x00, 0x01, 0xc0, 0x00, b'M', b'c', b'D', b'n'];
        assert_eq!(node_id(&bytes), Some(1001));
        assert_eq!(node_id(b"McDn"), None);
    }

    #[test]
    fn only_clipboard_and_drives_are_blocked_and_only_when_not_allowed() {
        let none = Allowances::default();
        assert!(none.blocks("cliprdr") && none.blocks("RDPDR") && !none.blocks("rdpsnd") && !none.blocks("drdynvc"));
        let all = Allowances { clipboard: true, drives: true };
        assert!(!all.blocks("cliprdr") && !all.blocks("rdpdr"));
    }

    #[test]
    fn garbage_is_not_mistaken_for_a_client_info_or_confirm_active() {
        assert!(client_info(b"\x03\x00\x00\x0b\x06\xe0\x00\x00\x00\x00\x00", None).is_none());
        assert!(confirm_active(b"\x03\x00\x00\x07\x02\xf0\x80").is_none());
    }
}
