//! JSON Lines export: each record's line copied byte for byte, so its hash still verifies.

/// Appends one record's line, as read from its log (newline excluded), and a newline.
pub(crate) fn write_record(buf: &mut Vec<u8>, line: &[u8]) {
    buf.extend_from_slice(line);
    buf.push(b'\n');
}
