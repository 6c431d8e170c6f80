//! Rendering an RDP recording to pictures.
//!
//! The recording holds the decrypted target-to-client stream. Replay cuts it
//! into PDUs, learns the channel IDs from the connection sequence (Connect-
//! Response, Attach-User-Confirm), builds IronRDP's `ActiveStage` at every
//! Demand Active, feeds it every PDU after that and writes the framebuffer
//! as PNG every `every` of recorded time (and once at the end). PDUs the
//! decoder does not handle (licensing, sound, finalization) are skipped and
//! counted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ironrdp_core::decode;
use ironrdp_graphics::image_processing::PixelFormat;
use ironrdp_pdu::mcs::{ConnectResponse, McsMessage, decode_send_data_indication};
use ironrdp_pdu::rdp::capability_sets::CapabilitySet;
use ironrdp_pdu::rdp::headers::{ShareControlPdu, decode_share_control};
use ironrdp_pdu::x224::{X224, X224Data};
use ironrdp_session::image::DecodedImage;
use ironrdp_session::{ActiveStage, ActiveStageBuilder, ActiveStageOutput};

use crate::recording::rdp_format::{self, FROM_TARGET};

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RenderSummary {
    pub frames_written: usize,
    pub graphics_updates: usize,
    pub pdus: usize,
    pub pdus_skipped: usize,
    pub width: u16,
    pub height: u16,
    pub duration_ms: u64,
    pub files: Vec<PathBuf>,
    /// Bytes after the last hash-chain link, not rendered (a recording cut by a crash).
    pub unverified_tail: usize,
}

/// The largest desktop replay renders, in pixels (256 MiB as RGBA): MS-RDPBCGR caps a
/// client's desktop at 8192 x 8192. A recording declaring more was altered, and would
/// otherwise make replay allocate up to 17 GB (found while writing the rdprec fuzz target).
const MAX_DESKTOP_PIXELS: u32 = 8192 * 8192;

struct Renderer {
    io_channel: u16,
    user_channel: u16,
    message_channel: Option<u16>,
    stage: Option<ActiveStage>,
    image: Option<DecodedImage>,
    /// A Demand Active with a desktop larger than `MAX_DESKTOP_PIXELS`.
    oversize: Option<(u16, u16)>,
}

fn demand_active(frame: &[u8]) -> Option<(u32, u16, u16)> {
    let ctx = decode_send_data_indication(frame).ok()?;
    let control = decode_share_control(ctx).ok()?;
    let ShareControlPdu::ServerDemandActive(active) = control.pdu else { return None };
    let (w, h) = active.pdu.capability_sets.iter().find_map(|c| match c {
        CapabilitySet::Bitmap(b) => Some((b.desktop_width, b.desktop_height)),
        _ => None,
    })?;
    Some((control.share_id, w, h))
}

impl Renderer {
    /// One target-to-client PDU; returns how many graphics updates it drew, or `None` if skipped.
    fn feed(&mut self, action: ironrdp_pdu::Action, frame: &[u8]) -> Option<usize> {
        if action == ironrdp_pdu::Action::X224 {
            if let Ok(X224(data)) = decode::<X224<X224Data<'_>>>(frame)
                && let Ok(response) = decode::<ConnectResponse>(data.data.as_ref())
            {
                self.io_channel = response.global_channel_id();
                self.message_channel = response
                    .conference_create_response
                    .gcc_blocks()
                    .message_channel
                    .as_ref()
                    .map(|m| m.mcs_message_channel_id);
                return Some(0);
            }
            if let Ok(X224(McsMessage::AttachUserConfirm(c))) = decode::<X224<McsMessage<'_>>>(frame) {
                self.user_channel = c.initiator_id;
                return Some(0);
            }
            if let Some((share_id, w, h)) = demand_active(frame) {
                if u32::from(w) * u32::from(h) > MAX_DESKTOP_PIXELS {
                    self.oversize = Some((w, h));
                    return None;
                }
                self.image = Some(DecodedImage::new(PixelFormat::RgbA32, w, h));
                self.stage = Some(
                    ActiveStageBuilder {
                        static_channels: Default::default(),
                        user_channel_id: self.user_channel,
                        io_channel_id: self.io_channel,
                        message_channel_id: self.message_channel,
                        share_id,
                        compression_type: None,
                        enable_server_pointer: false,
                        pointer_software_rendering: false,
                    }
                    .build(),
                );
                return Some(0);
            }
        }
        let (stage, image) = (self.stage.as_mut()?, self.image.as_mut()?);
        let out = stage.process(image, action, frame, None).ok()?;
        Some(out.iter().filter(|o| matches!(o, ActiveStageOutput::GraphicsUpdate(_))).count())
    }
}

fn write_png(image: &DecodedImage, path: &Path) -> Result<(), String> {
    let (w, h) = (u32::from(image.width()), u32::from(image.height()));
    let mut rgb = Vec::with_capacity(image.data().len() / 4 * 3);
    for px in image.data().chunks_exact(4) {
        rgb.extend_from_slice(&px[..3]);
    }
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(&rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())
}

/// Renders `recording` into `dir` as `frame-000001.png`, ... every `every` of recorded time.
pub fn render_frames(recording: &[u8], dir: &Path, every: Duration) -> Result<RenderSummary, String> {
    let mut made = false;
    render_with(recording, every, |image, n| {
        if !made {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            made = true;
        }
        let path = dir.join(format!("frame-{n:06}.png"));
        write_png(image, &path)?;
        Ok(Some(path))
    })
}

/// Decodes `recording` and hands `emit` frame number n (from 1) every
/// `every` of recorded time; what `emit` returns is listed in the summary.
pub(crate) fn render_with(
    recording: &[u8],
    every: Duration,
    mut emit_frame: impl FnMut(&DecodedImage, usize) -> Result<Option<PathBuf>, String>,
) -> Result<RenderSummary, String> {
    let parsed = rdp_format::read(recording).map_err(|e| e.to_string())?;
    let every_us = every.as_micros().max(1) as u64;
    let mut r = Renderer {
        io_channel: 1003,
        user_channel: 1002,
        message_channel: None,
        stage: None,
        image: None,
        oversize: None,
    };
    let mut summary = RenderSummary { unverified_tail: parsed.unverified_tail, ..Default::default() };
    let mut buf: Vec<u8> = Vec::new();
    let mut next_at = every_us;
    let mut dirty = false;
    let mut last_us = 0;
    let mut emit = |image: &DecodedImage, summary: &mut RenderSummary| -> Result<(), String> {
        if let Some(path) = emit_frame(image, summary.frames_written + 1)? {
            summary.files.push(path);
        }
        summary.frames_written += 1;
        Ok(())
    };
    for record in parsed.records.iter().filter(|r| r.kind == FROM_TARGET) {
        while record.at_us >= next_at {
            if dirty && let Some(image) = &r.image {
                emit(image, &mut summary)?;
                dirty = false;
            }
            next_at += every_us;
        }
        last_us = record.at_us;
        buf.extend_from_slice(record.data);
        loop {
            let info = match ironrdp_pdu::find_size(&buf) {
                Ok(Some(info)) if buf.len() >= info.length && info.length > 0 => info,
                Ok(_) => break,
                Err(_) => return Err(format!("the recorded stream is not RDP at offset {}", summary.pdus)),
            };
            let frame: Vec<u8> = buf.drain(..info.length).collect();
            summary.pdus += 1;
            match r.feed(info.action, &frame) {
                Some(n) => {
                    summary.graphics_updates += n;
                    dirty |= n > 0;
                }
                None => summary.pdus_skipped += 1,
            }
            if let Some((w, h)) = r.oversize {
                return Err(format!(
                    "the recording declares a {w}x{h} desktop, more than replay renders (at most 8192x8192 \
                     pixels): it was altered or is not a jit-gateway recording"
                ));
            }
        }
    }
    if let Some(image) = &r.image {
        if dirty || summary.frames_written == 0 {
            emit(image, &mut summary)?;
        }
        summary.width = image.width();
        summary.height = image.height();
    }
    summary.duration_ms = last_us / 1000;
    Ok(summary)
}

/// Makes a video of the frames with ffmpeg, when it is installed.
pub fn frames_to_video(dir: &Path, every: Duration, out: &Path) -> Result<(), String> {
    let rate = format!("{:.3}", 1.0 / every.as_secs_f64().max(0.001));
    let status = std::process::Command::new("ffmpeg")
        .args(["-y", "-loglevel", "error", "-framerate", &rate, "-i"])
        .arg(dir.join("frame-%06d.png"))
        .args(["-pix_fmt", "yuv420p", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"])
        .arg(out)
        .status()
        .map_err(|e| format!("ffmpeg: {e} (install ffmpeg for --video)"))?;
    if status.success() { Ok(()) } else { Err(format!("ffmpeg failed ({status})")) }
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
