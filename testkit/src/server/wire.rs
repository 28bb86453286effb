//! OP_MSG framing (opcode 2013), the only message format the MongoDB driver 3.x sends.
//!
//! ```text
//!   header: messageLength i32 | requestID i32 | responseTo i32 | opCode i32 (2013)
//!   body:   flagBits u32 | sections… | [crc32c u32 if flagBits bit 0]
//!   section kind 0: one BSON document (the command)
//!   section kind 1: i32 size | cstring identifier | BSON documents (a document sequence)
//! ```
//!
//! Document sequences are folded into the command as arrays under their identifier, which is
//! what the server would see after parsing. A reply is one kind-0 section with flags 0.

use std::io::{self, Read, Write};

use bson::{Bson, Document};

/// The OP_MSG opcode.
pub const OP_MSG: i32 = 2013;
/// Largest message this server accepts (MongoDB's `maxMessageSizeBytes`).
pub const MAX_MESSAGE: usize = 48_000_000;

/// One request read from a connection.
#[derive(Debug)]
pub struct Request {
    /// The request id, echoed as `responseTo` in the reply.
    pub request_id: i32,
    /// Whether the client expects no reply (`moreToCome`).
    pub more_to_come: bool,
    /// The command with its document sequences folded in.
    pub command: Document,
}

fn invalid(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

fn i32_at(bytes: &[u8], at: usize) -> io::Result<i32> {
    bytes
        .get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_le_bytes)
        .ok_or_else(|| invalid("truncated message"))
}

/// Reads one OP_MSG request. `Ok(None)` when the peer closed the connection between messages.
pub fn read_request(stream: &mut impl Read) -> io::Result<Option<Request>> {
    let mut header = [0u8; 16];
    match stream.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let length = i32_at(&header, 0)?;
    let request_id = i32_at(&header, 4)?;
    let op_code = i32_at(&header, 12)?;
    let length = usize::try_from(length)
        .ok()
        .filter(|n| (21..=MAX_MESSAGE).contains(n))
        .ok_or_else(|| invalid(format!("bad message length {length}")))?;
    let mut body = vec![0u8; length - 16];
    stream.read_exact(&mut body)?;
    if op_code != OP_MSG {
        return Err(invalid(format!(
            "opcode {op_code} is not supported (OP_MSG only)"
        )));
    }
    let flags = i32_at(&body, 0)? as u32;
    let end = if flags & 1 != 0 {
        body.len().saturating_sub(4)
    } else {
        body.len()
    };
    let mut at = 4;
    let mut command: Option<Document> = None;
    let mut sequences: Vec<(String, Vec<Bson>)> = Vec::new();
    while at < end {
        let kind = body[at];
        at += 1;
        match kind {
            0 => {
                let size = usize::try_from(i32_at(&body, at)?)
                    .map_err(|_| invalid("negative document size"))?;
                let bytes = body
                    .get(at..at + size)
                    .ok_or_else(|| invalid("truncated body"))?;
                command = Some(Document::from_reader(bytes).map_err(|e| invalid(e.to_string()))?);
                at += size;
            }
            1 => {
                let size = usize::try_from(i32_at(&body, at)?)
                    .map_err(|_| invalid("negative sequence size"))?;
                let section = body
                    .get(at + 4..at + size)
                    .ok_or_else(|| invalid("truncated sequence"))?;
                let nul = section
                    .iter()
                    .position(|b| *b == 0)
                    .ok_or_else(|| invalid("unterminated identifier"))?;
                let name = String::from_utf8_lossy(&section[..nul]).into_owned();
                let mut rest = &section[nul + 1..];
                let mut docs = Vec::new();
                while !rest.is_empty() {
                    let n = usize::try_from(i32_at(rest, 0)?)
                        .map_err(|_| invalid("negative document size"))?;
                    let doc = rest.get(..n).ok_or_else(|| invalid("truncated document"))?;
                    docs.push(Bson::Document(
                        Document::from_reader(doc).map_err(|e| invalid(e.to_string()))?,
                    ));
                    rest = &rest[n..];
                }
                sequences.push((name, docs));
                at += size;
            }
            other => return Err(invalid(format!("unknown section kind {other}"))),
        }
    }
    let mut command = command.ok_or_else(|| invalid("OP_MSG without a body section"))?;
    for (name, docs) in sequences {
        command.insert(name, docs);
    }
    Ok(Some(Request {
        request_id,
        more_to_come: flags & 2 != 0,
        command,
    }))
}

/// Writes `reply` as the OP_MSG answer to request `response_to`.
pub fn write_reply(
    stream: &mut impl Write,
    request_id: i32,
    response_to: i32,
    reply: &Document,
) -> io::Result<()> {
    let body = reply.to_vec().map_err(|e| invalid(e.to_string()))?;
    let length = 16 + 4 + 1 + body.len();
    let mut message = Vec::with_capacity(length);
    message.extend_from_slice(&(length as i32).to_le_bytes());
    message.extend_from_slice(&request_id.to_le_bytes());
    message.extend_from_slice(&response_to.to_le_bytes());
    message.extend_from_slice(&OP_MSG.to_le_bytes());
    message.extend_from_slice(&0u32.to_le_bytes());
    message.push(0);
    message.extend_from_slice(&body);
    stream.write_all(&message)?;
    stream.flush()
}

/// Writes `command` as an OP_MSG request (for tests of the server without a driver).
pub fn write_request(
    stream: &mut impl Write,
    request_id: i32,
    command: &Document,
) -> io::Result<()> {
    write_reply(stream, request_id, 0, command)
}

/// Reads one reply (the inverse of [`write_reply`]), for tests of the server without a driver.
pub fn read_reply(stream: &mut impl Read) -> io::Result<Document> {
    read_request(stream)?
        .map(|r| r.command)
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    #[test]
    fn a_message_round_trips_and_sequences_fold_into_the_command() {
        let mut out = Vec::new();
        write_request(&mut out, 7, &doc! { "ping": 1, "$db": "admin" }).unwrap();
        let request = read_request(&mut &out[..]).unwrap().unwrap();
        assert_eq!(request.request_id, 7);
        assert_eq!(request.command, doc! { "ping": 1, "$db": "admin" });

        // A kind-1 section by hand: `documents: [{a: 1}]`.
        let body = doc! { "insert": "c" }.to_vec().unwrap();
        let item = doc! { "a": 1 }.to_vec().unwrap();
        let mut seq = Vec::new();
        seq.extend_from_slice(&((4 + 10 + item.len()) as i32).to_le_bytes());
        seq.extend_from_slice(b"documents\0");
        seq.extend_from_slice(&item);
        let mut msg = Vec::new();
        let len = 16 + 4 + 1 + body.len() + 1 + seq.len();
        for v in [len as i32, 1, 0, OP_MSG] {
            msg.extend_from_slice(&v.to_le_bytes());
        }
        msg.extend_from_slice(&0u32.to_le_bytes());
        msg.push(0);
        msg.extend_from_slice(&body);
        msg.push(1);
        msg.extend_from_slice(&seq);
        let request = read_request(&mut &msg[..]).unwrap().unwrap();
        assert_eq!(
            request.command,
            doc! { "insert": "c", "documents": [{ "a": 1 }] }
        );
        assert!(read_request(&mut &[][..]).unwrap().is_none());
        assert!(read_request(&mut &msg[..20]).is_err(), "a truncated body");
    }
}
