//! HPACK decoding (RFC 7541), as much as the rewriter needs: one connection's header blocks, in
//! order, with the client's dynamic table.
//!
//! Why not a crate: `h2`'s decoder is private, and the one public decoder kept up (loona-hpack) builds
//! a two-level hash map of the whole Huffman code for every Huffman string, which made the rewriter
//! the slowest part of a request on the provider socket and of its fuzz target. This decoder reads
//! from the block in place, allocates only what the dynamic table keeps and what Huffman strings
//! decode to, and follows RFC 7541 as grpc-go's decoder does: a table size update only at the start
//! of a block and never above what the server allows, integers of at most five octets. loona-hpack
//! stays as the oracle of the tests.

use std::collections::VecDeque;
use std::ops::ControlFlow;

pub(crate) mod huffman;

/// Why a header block does not decode. Every one is a connection error (COMPRESSION_ERROR).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The block ends inside a field.
    Truncated,
    /// An integer of more than five octets.
    Integer,
    /// Index 0, or past the static and dynamic tables.
    Index,
    /// A table size update after a field, or above the allowed size.
    SizeUpdate,
    Huffman(huffman::Error),
}

/// The static table (RFC 7541 Appendix A); index 1 is the first entry.
const STATIC: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

/// The most a connection keeps of its Huffman scratch buffers between fields.
const SCRATCH_KEPT: usize = 16 * 1024;

/// An entry's size as the table counts it (RFC 7541 §4.1).
fn entry_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 32
}

/// A name and its value.
type Entry = (Box<[u8]>, Box<[u8]>);

/// The client's dynamic table, newest entry first.
struct Dynamic {
    entries: VecDeque<Entry>,
    size: usize,
    max: usize,
}

impl Dynamic {
    fn evict_to(&mut self, room: usize) {
        while self.size > room {
            let (n, v) = self.entries.pop_back().expect("a table with a size has entries");
            self.size -= entry_size(&n, &v);
        }
    }

    /// RFC 7541 §4.4: an entry larger than the table empties it and is not kept.
    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = entry_size(name, value);
        if size > self.max {
            self.evict_to(0);
            return;
        }
        self.evict_to(self.max - size);
        self.entries.push_front((name.into(), value.into()));
        self.size += size;
    }
}

/// One connection's decoder.
pub struct Decoder {
    dynamic: Dynamic,
    /// The largest table the client may ask for (the server's SETTINGS_HEADER_TABLE_SIZE).
    allowed: usize,
    /// Reused for Huffman strings.
    scratch: (Vec<u8>, Vec<u8>),
}

/// A literal's name or value: where it lies in the block, or decoded into a scratch buffer.
enum Str {
    Block(usize, usize),
    Scratch,
}

impl Str {
    fn get<'a>(&self, block: &'a [u8], scratch: &'a [u8]) -> &'a [u8] {
        match *self {
            Str::Block(from, to) => &block[from..to],
            Str::Scratch => scratch,
        }
    }
}

impl Decoder {
    /// A decoder whose client may use a dynamic table of up to `allowed` octets.
    pub fn new(allowed: usize) -> Self {
        Self {
            dynamic: Dynamic { entries: VecDeque::new(), size: 0, max: allowed },
            allowed,
            scratch: Default::default(),
        }
    }

    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), Error> {
        match index {
            0 => Err(Error::Index),
            1..=61 => Ok(STATIC[index - 1]),
            _ => self.dynamic.entries.get(index - 62).map(|(n, v)| (&n[..], &v[..])).ok_or(Error::Index),
        }
    }

    /// Decodes one whole header block (HEADERS plus CONTINUATIONs), calling `field` with each name and
    /// value in order until it breaks. After an error or a break the connection must end: the table
    /// may be partly updated.
    pub fn decode(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), Error> {
        let mut at = 0;
        let mut first = true;
        while at < block.len() {
            let b = block[at];
            let flow = if b & 0x80 != 0 {
                let index = integer(block, &mut at, 7)?;
                let (name, value) = self.entry(index)?;
                field(name, value)
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update (§6.3): only before the block's first field (§4.2).
                let size = integer(block, &mut at, 5)?;
                if !first || size > self.allowed {
                    return Err(Error::SizeUpdate);
                }
                self.dynamic.max = size;
                self.dynamic.evict_to(size);
                continue;
            } else {
                let (mut name_buf, mut value_buf) = std::mem::take(&mut self.scratch);
                let flow = self.literal(block, &mut at, &mut name_buf, &mut value_buf, &mut field);
                for buf in [&mut name_buf, &mut value_buf] {
                    buf.clear();
                    // A connection keeps what its usual strings need, not its largest one.
                    if buf.capacity() > SCRATCH_KEPT {
                        *buf = Vec::new();
                    }
                }
                self.scratch = (name_buf, value_buf);
                flow?
            };
            first = false;
            if flow.is_break() {
                return Ok(());
            }
        }
        Ok(())
    }
    /// A literal field (§6.2): with incremental indexing (01), without (0000) or never indexed (0001).
    fn literal(
        &mut self,
        block: &[u8],
        at: &mut usize,
        name_buf: &mut Vec<u8>,
        value_buf: &mut Vec<u8>,
        field: &mut impl FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Error> {
        let indexing = block[*at] & 0x40 != 0;
        let index = integer(block, at, if indexing { 6 } else { 4 })?;
        let name = if index == 0 { Some(string(block, at, name_buf)?) } else { None };
        let value = string(block, at, value_buf)?;
        let value = value.get(block, value_buf);
        let flow = match name {
            Some(name) => {
                let name = name.get(block, name_buf);
                let flow = field(name, value);
                if indexing {
                    self.dynamic.insert(name, value);
                }
                flow
            }
            None => {
                let (name, _) = self.entry(index)?;
                let flow = field(name, value);
                if indexing {
                    let name = name.to_vec();
                    self.dynamic.insert(&name, value);
                }
                flow
            }
        };
        Ok(flow)
    }
}

/// An integer with an `n`-bit prefix (RFC 7541 §5.1), at most five octets as loona-hpack and h2
/// allow (enough for 2^28, past any length a block can hold).
fn integer(block: &[u8], at: &mut usize, n: u32) -> Result<usize, Error> {
    let mask = (1usize << n) - 1;
    let first = usize::from(*block.get(*at).ok_or(Error::Truncated)?) & mask;
    *at += 1;
    if first < mask {
        return Ok(first);
    }
    let mut value = mask;
    for shift in [0, 7, 14, 21] {
        let b = *block.get(*at).ok_or(Error::Truncated)?;
        *at += 1;
        value += usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Error::Integer)
}

/// A string literal (§5.2): where it lies in the block, or, Huffman-coded, decoded into `buf`.
fn string(block: &[u8], at: &mut usize, buf: &mut Vec<u8>) -> Result<Str, Error> {
    let huffman = *block.get(*at).ok_or(Error::Truncated)? & 0x80 != 0;
    let len = integer(block, at, 7)?;
    let from = *at;
    let to = from.checked_add(len).filter(|&to| to <= block.len()).ok_or(Error::Truncated)?;
    *at = to;
    if !huffman {
        return Ok(Str::Block(from, to));
    }
    huffman::decode(&block[from..to], buf).map_err(Error::Huffman)?;
    Ok(Str::Scratch)
}

#[cfg(test)]
mod tests;
