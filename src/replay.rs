//! `jit-gateway replay`: plays a recording in the terminal.
//!
//! Terminal sessions play with their original timing (scaled by `--speed`,
//! long pauses cut to `--max-idle`); exec recordings replay stdout and
//! stderr in order, with the command line and exit status around them; sftp
//! recordings print the file operations.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flate2::read::GzDecoder;

use crate::recording::asciicast;
use crate::recording::exec_format::{Decoder, ExecHeader, ExecTrailer, Kind};

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub speed: f64,
    pub max_idle: Option<Duration>,
    /// Print everything at once (no waiting).
    pub instant: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no recording `{0}` (give a recording ID from `jit-gateway recordings`, or a file path)")]
    NotFound(String),
    #[error("{path}: {message}")]
    Bad { path: PathBuf, message: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A path as given, or the file of a recording ID in `dir`.
pub fn resolve(arg: &str, dir: Option<&Path>) -> Result<PathBuf, ReplayError> {
    let direct = PathBuf::from(arg);
    if direct.is_file() {
        return Ok(direct);
    }
    if crate::ids::looks_like(arg, "r")
        && let Some(dir) = dir
    {
        for ext in ["cast", "exec.gz", "sftp.jsonl", "rdprec"] {
            let p = dir.join(format!("{arg}.{ext}"));
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(ReplayError::NotFound(arg.to_string()))
}

struct Pacer<'a> {
    options: &'a ReplayOptions,
    last: f64,
}

impl Pacer<'_> {
    fn wait_until(&mut self, t: f64) {
        let gap = (t - self.last).max(0.0);
        self.last = t;
        if self.options.instant || gap == 0.0 {
            return;
        }
        std::thread::sleep(pause_for(gap, self.options));
    }
}

/// How long to wait for a gap of `gap` recorded seconds. A recording's times
/// are not trusted: a gap too large for a `Duration` (an altered `1e300`)
/// waits as long as possible, capped by `--max-idle`, instead of panicking.
fn pause_for(gap: f64, options: &ReplayOptions) -> Duration {
    let pause = Duration::try_from_secs_f64(gap / options.speed.max(0.01)).unwrap_or(Duration::MAX);
    options.max_idle.map_or(pause, |cap| pause.min(cap))
}

pub fn replay(
    path: &Path,
    options: &ReplayOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), ReplayError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let bad = |message: String| ReplayError::Bad { path: path.to_path_buf(), message };
    if name.ends_with(".cast") {
        let text = std::fs::read_to_string(path)?;
        let (header, events, cut) = asciicast::parse_cut(&text).map_err(|e| bad(e.to_string()))?;
        if let Some(title) = &header.title {
            writeln!(err, "# {title} ({}x{}) — recorded by jit-gateway", header.width, header.height)?;
        }
        let mut pacer = Pacer { options, last: 0.0 };
        for e in events.iter().filter(|e| e.code == "o") {
            pacer.wait_until(e.time);
            out.write_all(e.data.as_bytes())?;
            out.flush()?;
        }
        if cut {
            writeln!(err, "\n# the recording ends in a cut line (the gateway stopped while writing it)")?;
        }
        return Ok(());
    }
    if name.ends_with(".exec.gz") {
        let file = std::fs::File::open(path)?;
        let mut decoder = Decoder::new(GzDecoder::new(BufReader::new(file))).map_err(|e| bad(e.to_string()))?;
        let mut pacer = Pacer { options, last: 0.0 };
        let (mut ended, mut damage) = (false, None);
        loop {
            let frame = match decoder.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                // A recording cut by a crash has no trailer and ends mid-stream: show what there is.
                Err(e) if !ended => {
                    damage = Some(e.to_string());
                    break;
                }
                Err(e) => return Err(bad(e.to_string())),
            };
            match frame.kind {
                Kind::Header => {
                    let h: ExecHeader = serde_json::from_slice(&frame.payload).map_err(|e| bad(e.to_string()))?;
                    writeln!(
                        err,
                        "# {} on {} as {} — recorded by jit-gateway\n$ {}",
                        h.user, h.target, h.login, h.command
                    )?;
                }
                Kind::Stdout | Kind::Stderr => {
                    pacer.wait_until(frame.elapsed_us as f64 / 1e6);
                    let sink: &mut dyn Write = if frame.kind == Kind::Stdout { &mut *out } else { &mut *err };
                    sink.write_all(&frame.payload)?;
                    sink.flush()?;
                }
                Kind::Stdin => {}
                Kind::Trailer => {
                    ended = true;
                    let t: ExecTrailer = serde_json::from_slice(&frame.payload).map_err(|e| bad(e.to_string()))?;
                    let status = match (&t.exit_status, &t.exit_signal) {
                        (Some(code), _) => format!("exit status {code}"),
                        (None, Some(sig)) => format!("killed by signal {sig}"),
                        _ => "no exit status".into(),
                    };
                    writeln!(
                        err,
                        "\n# {status}; {} bytes of output ({} on stderr){}",
                        t.stdout_bytes,
                        t.stderr_bytes,
                        if t.capped { ", past the cap only counted and hashed" } else { "" }
                    )?;
                }
            }
        }
        if !ended {
            let how = damage.map(|e| format!(": {e}")).unwrap_or_default();
            writeln!(err, "\n# the recording ends here, without its trailer (the gateway stopped first{how})")?;
        }
        return Ok(());
    }
    if name.ends_with(".sftp.jsonl") {
        let reader = BufReader::new(std::fs::File::open(path)?);
        writeln!(out, "{:<10} {:>12}  {:<8}  {:<64}  PATH", "OPERATION", "BYTES", "STATUS", "SHA-256")?;
        for line in reader.lines() {
            let v: serde_json::Value = serde_json::from_str(&line?).map_err(|e| bad(e.to_string()))?;
            let text = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
            let mut path_text = text("path");
            if let Some(to) = v.get("to").and_then(|x| x.as_str()) {
                path_text = format!("{path_text} -> {to}");
            }
            writeln!(
                out,
                "{:<10} {:>12}  {:<8}  {:<64}  {}",
                text("op"),
                v.get("bytes").and_then(|x| x.as_u64()).unwrap_or(0),
                text("status").chars().take(8).collect::<String>(),
                text("sha256"),
                path_text
            )?;
        }
        return Ok(());
    }
    Err(bad("not a jit-gateway recording (.cast, .exec.gz or .sftp.jsonl)".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absurd_gap_in_an_altered_recording_waits_at_most_max_idle_and_never_panics() {
        let options = |max_idle| ReplayOptions { speed: 1.0, max_idle, instant: false };
        // `Duration::from_secs_f64(1e300)` panicked: replay of a `.cast` with `[1e300, "o", "x"]`.
        assert_eq!(pause_for(1e300, &options(Some(Duration::from_secs(2)))), Duration::from_secs(2));
        assert_eq!(pause_for(1e300, &options(None)), Duration::MAX);
        assert_eq!(pause_for(f64::INFINITY, &options(Some(Duration::ZERO))), Duration::ZERO);
        assert_eq!(pause_for(1.5, &options(None)), Duration::from_millis(1500));
        let fast = ReplayOptions { speed: 2.0, max_idle: None, instant: false };
        assert_eq!(pause_for(1.0, &fast), Duration::from_millis(500));
    }

    #[test]
    fn an_altered_cast_with_a_huge_time_replays_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r-x.cast");
        std::fs::write(
            &path,
            "{\"version\": 2, \"width\": 80, \"height\": 24, \"timestamp\": 0}\n[1e300, \"o\", \"x\"]\n",
        )
        .unwrap();
        let options = ReplayOptions { speed: 1.0, max_idle: Some(Duration::ZERO), instant: false };
        let mut out = Vec::new();
        replay(&path, &options, &mut out, &mut std::io::sink()).unwrap();
        assert_eq!(out, b"x");
    }
}
