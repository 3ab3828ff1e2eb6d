//! The reason a cancelled task carries (PROTOCOL.md "VT.CANCEL"): one text for both engines, so
//! a reader of a dead-letter entry (or of a stored result) tells a cancellation from a failure.

/// The reason of a task cancelled without one; a given reason follows it after `": "`.
pub const CANCELLED: &str = "cancelled";

/// The error text a cancelled task is dead-lettered with: `cancelled` or `cancelled: <reason>`.
pub fn cancel_error(reason: &[u8]) -> Vec<u8> {
    let mut out = CANCELLED.as_bytes().to_vec();
    if !reason.is_empty() {
        out.extend_from_slice(b": ");
        out.extend_from_slice(reason);
    }
    out
}

/// Whether a dead-letter error is a cancellation's.
pub fn is_cancel_error(error: &[u8]) -> bool {
    error == CANCELLED.as_bytes() || error.starts_with(b"cancelled: ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_and_without_a_reason() {
        assert_eq!(cancel_error(b""), b"cancelled");
        assert_eq!(cancel_error(b"user asked"), b"cancelled: user asked");
        assert!(is_cancel_error(&cancel_error(b"x")) && is_cancel_error(b"cancelled"));
        assert!(!is_cancel_error(b"cancelledX") && !is_cancel_error(b"boom"));
    }
}
