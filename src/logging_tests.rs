use std::sync::{Arc, Mutex};

use super::*;

#[test]
fn control_characters_are_escaped_and_plain_text_is_borrowed() {
    assert!(matches!(escape("vm1.example-2"), Cow::Borrowed(_)));
    assert_eq!(escape("vm1\nINFO forged"), "vm1\\nINFO forged");
    assert_eq!(escape("a\r\tb\u{1b}[31mc\u{7f}"), "a\\r\\tb\\u{1b}[31mc\\u{7f}");
    assert_eq!(escape("x\u{2028}y\u{202e}z\u{85}"), "x\\u{2028}y\\u{202e}z\\u{85}");
    assert_eq!(escape("ünïcödé ok"), "ünïcödé ok");
    assert!(has_control_chars("a\0b") && has_control_chars("\u{2066}") && !has_control_chars("alice@example.test"));
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn one_event_is_one_line_whatever_its_fields_hold() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .fmt_fields(EscapingFields)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let host = "vm1\n2026-12-02T15:00:00Z  INFO granted user=mallory";
    let error = std::io::Error::other("bad\r\nthing");
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("conn", peer = %"1.2.3.4\nx");
        let _in = span.enter();
        tracing::info!(user = %"eve\u{1b}[2K", %host, port = 22, login = "ad\nmin", error = &error as &dyn std::error::Error, "jump refused");
        tracing::warn!("a message with {}", "a\nnewline");
    });
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].contains("jump refused user=eve\\u{1b}[2K host=vm1\\n2026-12-02T15:00:00Z  INFO granted"),
        "{text}"
    );
    assert!(lines[0].contains("port=22 login=\"ad\\nmin\" error=bad\\r\\nthing"), "{text}");
    assert!(lines[0].contains("conn{peer=1.2.3.4\\nx}"), "{text}");
    assert!(lines[1].ends_with("a message with a\\nnewline"), "{text}");
}
