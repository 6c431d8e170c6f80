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

use bytes::{Bytes, BytesMut};
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
use crate::recording::{Recorder, Stream};

/// Redirections a grant allows (everything else is dropped).
#[derive(Debug, Clone, Copy, Default)]
pub struct Allowances {
    pub clipboard: bool,
    pub drives: bool,
}

impl Allowances {
    /// From a grant's `rdp_redirect` list.
    pub fn from_grant(allowed: &[String]) -> Allowances {
        Allowances {
            clipboard: allowed.iter().any(|a| a == "clipboard"),
            drives: allowed.iter().any(|a| a == "drives"),
        }
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
    /// Receives the channel decision (for the audit log) once the Connect-Initial is read.
    pub decided: tokio::sync::oneshot::Sender<serde_json::Value>,
    /// Told once the client's Client Info PDU has passed: its side of the connection sequence is done.
    pub established: tokio::sync::oneshot::Sender<()>,
}

/// Channels whose traffic is dropped, by MCS channel ID, once the target has assigned them.
#[derive(Default)]
pub struct Blocked {
    /// Positions (in the client's channel list) of blocked channels.
    positions: Vec<usize>,
    ids: Vec<u16>,
}

pub type SharedBlocked = Arc<Mutex<Blocked>>;

/// Whether a TPKT frame carries data on a blocked channel (a poisoned lock blocks everything).
pub(crate) fn on_blocked_channel(blocked: &SharedBlocked, frame: &[u8]) -> bool {
    let Ok(b) = blocked.lock() else { return true };
    !b.ids.is_empty() && data_channel(frame).is_some_and(|c| b.ids.contains(&c))
}

fn protocol(bits: u32) -> SecurityProtocol {
    SecurityProtocol::from_bits_truncate(bits)
}

/// Rewrites the MCS Connect-Initial. Returns the new frame and an audit record of the channel decisions.
pub fn connect_initial(
    frame: &[u8],
    target_selected: u32,
    allow: Allowances,
    blocked: &SharedBlocked,
) -> Result<(Vec<u8>, serde_json::Value), String> {
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
pub fn client_info(
    frame: &[u8],
    credential: Option<(&RdpCredential, &str)>,
) -> Option<Result<ClientInfoFrames, String>> {
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
        encode_vec(&X224(SendDataRequest {
            initiator_id: req.initiator_id,
            channel_id: req.channel_id,
            user_data: Cow::Owned(user_data),
        }))
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
    encode_vec(&X224(SendDataRequest {
        initiator_id: req.initiator_id,
        channel_id: req.channel_id,
        user_data: Cow::Owned(user_data),
    }))
    .ok()
}

/// The MCS channel of a TPKT data frame (either direction).
fn data_channel(frame: &[u8]) -> Option<u16> {
    match decode::<X224<McsMessage<'_>>>(frame).ok()?.0 {
        McsMessage::SendDataRequest(r) => Some(r.channel_id),
        McsMessage::SendDataIndication(i) => Some(i.channel_id),
        _ => None,
    }
}

/// Cuts a byte stream into whole PDUs (TPKT or fast-path), handing each
/// out as `Bytes` without copying it: the same bytes go to the other side
/// and to the recording.
pub(crate) struct Framer {
    buf: BytesMut,
    side: &'static str,
}

impl Framer {
    pub(crate) fn new(side: &'static str) -> Framer {
        Framer { buf: BytesMut::new(), side }
    }

    /// The next PDU; `None` at a clean end.
    pub(crate) async fn next<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<Option<Bytes>, String> {
        loop {
            match wire::frame_len(&self.buf) {
                Ok(Some(n)) if self.buf.len() >= n => return Ok(Some(self.buf.split_to(n).freeze())),
                Ok(_) => {}
                Err(e) => return Err(format!("{} sent a malformed PDU: {e}", self.side)),
            }
            self.buf.reserve(16 << 10);
            let n = r.read_buf(&mut self.buf).await.map_err(|e| format!("{} connection failed: {e}", self.side))?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(format!("{} closed the connection mid-PDU", self.side))
                };
            }
        }
    }
}

enum Phase {
    ConnectInitial,
    ClientInfo,
    /// Connected: Confirm Active PDUs (also after a reactivation) are still rewritten.
    Active,
}

pub async fn client_to_target<R, W>(
    mut r: R,
    mut w: W,
    up: Upstream,
    recorder: Option<Arc<Recorder>>,
    blocked: SharedBlocked,
) -> Result<(), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Upstream { target_selected, credential, allow, record_input, decided, established } = up;
    let credential = credential.as_ref().map(|(c, p)| (c, p.expose().as_str()));
    let mut decided = Some(decided);
    let mut established = Some(established);
    let mut phase = Phase::ConnectInitial;
    let mut framer = Framer::new("the client");
    while let Some(frame) = framer.next(&mut r).await? {
        let (sent, recorded) = if !wire::is_tpkt(&frame) {
            // Fast-path from a client is input: keys and mouse.
            (frame.clone(), record_input.then_some(frame))
        } else {
            match phase {
                Phase::ConnectInitial => {
                    let (rewritten, decision) = connect_initial(&frame, target_selected, allow, &blocked)?;
                    if let Some(tx) = decided.take() {
                        let _ = tx.send(decision);
                    }
                    phase = Phase::ClientInfo;
                    let rewritten = Bytes::from(rewritten);
                    (rewritten.clone(), Some(rewritten))
                }
                Phase::ClientInfo => match client_info(&frame, credential) {
                    Some(result) => {
                        let (sent, redacted) = result?;
                        phase = Phase::Active;
                        if let Some(tx) = established.take() {
                            let _ = tx.send(());
                        }
                        (Bytes::from(sent), Some(Bytes::from(redacted)))
                    }
                    None => (frame.clone(), Some(frame)),
                },
                Phase::Active => {
                    if on_blocked_channel(&blocked, &frame) {
                        continue;
                    }
                    match confirm_active(&frame) {
                        Some(rewritten) => {
                            let rewritten = Bytes::from(rewritten);
                            (rewritten.clone(), Some(rewritten))
                        }
                        None => (frame.clone(), Some(frame)),
                    }
                }
            }
        };
        if let Some(rec) = recorded {
            keep(&recorder, Stream::Input, rec).await?;
        }
        send(&mut w, &sent, "the target").await?;
    }
    Ok(())
}

pub async fn target_to_client<R, W>(
    mut r: R,
    mut w: W,
    client_requested: u32,
    recorder: Option<Arc<Recorder>>,
    blocked: SharedBlocked,
) -> Result<(), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut framer = Framer::new("the target");
    let Some(first) = framer.next(&mut r).await? else { return Ok(()) };
    if !wire::is_tpkt(&first) {
        return Err("the target did not start with an MCS Connect-Response".into());
    }
    let mut frame = Bytes::from(connect_response(&first, client_requested, &blocked)?);
    loop {
        keep(&recorder, Stream::Output, frame.clone()).await?;
        send(&mut w, &frame, "the client").await?;
        frame = loop {
            match framer.next(&mut r).await? {
                None => return Ok(()),
                Some(f) if wire::is_tpkt(&f) && on_blocked_channel(&blocked, &f) => continue,
                Some(f) => break f,
            }
        };
    }
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
