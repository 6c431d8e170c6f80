//! One line for an error and its causes, as the command line prints it.
//!
//! The crate's error types put their cause in their own message (logs print
//! `Display` alone), and many also expose it as `source()`. Printing the whole
//! chain (`{:#}`) then repeats each cause: "x: No such file (os error 2): No
//! such file (os error 2)". `join` adds a cause only when the text so far
//! does not already say it.

/// Joins an error's messages, outermost first, skipping causes already said.
pub fn join<I, S>(messages: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut text = String::new();
    for message in messages {
        let message = message.as_ref();
        if message.is_empty() || text.contains(message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(message);
    }
    text
}

/// `join` over an error's `source()` chain.
pub fn of(error: &(dyn std::error::Error + 'static)) -> String {
    join(std::iter::successors(Some(error), |e| e.source()).map(|e| e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let error = crate::recording::RecordingError::Create {
            path: "recordings/r-1.cast".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)"),
        };
        assert_eq!(of(&error), "cannot create recording recordings/r-1.cast: No such file or directory (os error 2)");
    }

    #[test]
    fn context_and_causes_not_yet_said_are_kept_in_order() {
        assert_eq!(
            join(["cannot read the signing key k.pub", "permission denied"]),
            "cannot read the signing key k.pub: permission denied"
        );
        assert_eq!(join(["a: b", "b", "", "c"]), "a: b: c");
    }
}
