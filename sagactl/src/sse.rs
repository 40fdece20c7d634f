//! A reader of server-sent events (the `text/event-stream` format of the WHATWG HTML
//! standard), as much of it as `watch` needs: bytes in, the `data` of each complete event out.
//! Comments (`:` lines, the server's keep-alives), `event`, `id` and `retry` fields are read
//! and dropped.

/// Turns chunks of a `text/event-stream` body into event data.
#[derive(Debug, Default)]
pub struct EventReader {
    /// Bytes of a line not yet ended.
    partial: Vec<u8>,
    /// The `data` lines of the event being read.
    data: Vec<String>,
}

impl EventReader {
    /// Reads `chunk`; returns the data of every event it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut events = Vec::new();
        for &byte in chunk {
            if byte != b'\n' {
                self.partial.push(byte);
                continue;
            }
            let mut line = std::mem::take(&mut self.partial);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if let Some(data) = self.line(&String::from_utf8_lossy(&line)) {
                events.push(data);
            }
        }
        events
    }

    /// One line: `Some(data)` when it ended an event that had data.
    fn line(&mut self, line: &str) -> Option<String> {
        if line.is_empty() {
            if self.data.is_empty() {
                return None;
            }
            return Some(std::mem::take(&mut self.data).join("\n"));
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        if field == "data" {
            self.data
                .push(value.strip_prefix(' ').unwrap_or(value).to_owned());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_read_across_chunks_and_line_endings() {
        let mut reader = EventReader::default();
        assert!(
            reader
                .push(b": keep-alive\n\nevent: saga\nid: 1\ndata: {\"a\"")
                .is_empty()
        );
        assert_eq!(reader.push(b":1}\r\n\r\ndata:x\n"), ["{\"a\":1}"]);
        assert_eq!(reader.push(b"data: y\n\n"), ["x\ny"]);
        assert!(reader.push(b"retry: 100\n\n").is_empty());
    }
}
