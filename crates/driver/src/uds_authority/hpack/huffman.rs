//! HPACK's Huffman code (RFC 7541 §5.2, Appendix B), decoded with tables built at compile time.
//!
//! The code is canonical (codes of one length are consecutive, in symbol order, and every length's
//! first code follows the previous length's last), so the code lengths alone define it, and a symbol
//! is found by comparing the next 32 bits, left-justified, with one limit per length from 5 to 30: at
//! most 26 comparisons a symbol, letters and digits (5 to 8 bits) in at most 4. No table is built at
//! run time (the crate this replaced built two levels of hash maps for every string it decoded).

/// The length of each symbol's code, symbol 256 being EOS (RFC 7541 Appendix B).
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, //
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28, //
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, //
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, //
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, //
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, //
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, //
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, //
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, //
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, //
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, //
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23, //
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, //
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, //
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, //
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, //
    30,
];
const EOS: u16 = 256;
const MAX_LEN: usize = 30;

/// The canonical code's decoding tables.
struct Tables {
    /// Symbols in code order (by length, then symbol).
    symbols: [u16; 257],
    /// Per length: one past its last code, left-justified to 32 bits (so a 32-bit window below it
    /// starts with a code of this length or shorter); `u64` so that the last is 2^32.
    limit: [u64; MAX_LEN + 1],
    /// Per length: its first code, and where its symbols start in `symbols`.
    first: [u32; MAX_LEN + 1],
    offset: [u16; MAX_LEN + 1],
}

const TABLES: Tables = build();

const fn build() -> Tables {
    let mut t =
        Tables { symbols: [0; 257], limit: [0; MAX_LEN + 1], first: [0; MAX_LEN + 1], offset: [0; MAX_LEN + 1] };
    let mut code: u32 = 0;
    let mut at: usize = 0;
    let mut len = 1;
    while len <= MAX_LEN {
        t.first[len] = code;
        t.offset[len] = at as u16;
        let mut sym = 0;
        while sym < 257 {
            if LENGTHS[sym] as usize == len {
                t.symbols[at] = sym as u16;
                at += 1;
                code += 1;
            }
            sym += 1;
        }
        t.limit[len] = (code as u64) << (32 - len);
        code <<= 1;
        len += 1;
    }
    assert!(at == 257, "every symbol has a code");
    assert!(t.limit[MAX_LEN] == 1 << 32, "the code is complete");
    t
}

/// Why a Huffman string does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The EOS symbol inside the string (RFC 7541 §5.2: a decoding error).
    Eos,
    /// Padding longer than 7 bits, or not the most significant bits of EOS (all ones).
    Padding,
}

/// Appends the decoding of `src` to `out`.
pub fn decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
    let t = &TABLES;
    out.reserve(src.len() + src.len() / 2);
    // Bits not yet consumed, right-aligned in `acc`; `bits` of them.
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    let mut next = src.iter();
    loop {
        while bits <= 56 {
            match next.next() {
                Some(&b) => {
                    acc = acc << 8 | u64::from(b);
                    bits += 8;
                }
                None => break,
            }
        }
        if bits == 0 {
            return Ok(());
        }
        // The next 32 bits, left-justified (zeros past the end of the input).
        let window = if bits >= 32 { (acc >> (bits - 32)) as u32 } else { (acc << (32 - bits)) as u32 };
        let mut len = 5;
        while u64::from(window) >= t.limit[len] {
            len += 1;
        }
        if len as u32 > bits {
            // What is left is shorter than the code it begins: it must be padding.
            let mask = (1u64 << bits) - 1;
            return if bits <= 7 && acc & mask == mask { Ok(()) } else { Err(Error::Padding) };
        }
        let symbol = t.symbols[usize::from(t.offset[len]) + ((window >> (32 - len)) - t.first[len]) as usize];
        if symbol == EOS {
            return Err(Error::Eos);
        }
        out.push(symbol as u8);
        bits -= len as u32;
        acc &= (1u64 << bits) - 1;
    }
}

/// The Huffman encoding of `s` (tests: the decoder's oracle is another implementation's decoder fed
/// with this).
#[cfg(test)]
pub fn encode(s: &[u8]) -> Vec<u8> {
    let t = &TABLES;
    let code = |sym: usize| -> (u64, u32) {
        let len = LENGTHS[sym] as usize;
        let i = t.symbols.iter().position(|&s| usize::from(s) == sym).expect("every symbol is in the table");
        (u64::from(t.first[len]) + (i - usize::from(t.offset[len])) as u64, len as u32)
    };
    let (mut acc, mut bits, mut out) = (0u64, 0u32, Vec::new());
    for &b in s {
        let (c, len) = code(usize::from(b));
        acc = acc << len | c;
        bits += len;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1u64 << bits) - 1;
    }
    if bits > 0 {
        out.push((acc << (8 - bits)) as u8 | (0xff >> bits));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(src: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        decode(src, &mut out).map(|()| out)
    }

    #[test]
    fn rfc_7541_appendix_c_examples_decode() {
        // C.4.1, C.4.2, C.4.3, C.6.1: the Huffman strings of the RFC's request and response examples.
        let cases: &[(&str, &str)] = &[
            ("f1e3c2e5f23a6ba0ab90f4ff", "www.example.com"),
            ("a8eb10649cbf", "no-cache"),
            ("25a849e95ba97d7f", "custom-key"),
            ("25a849e95bb8e8b4bf", "custom-value"),
            ("6402", "302"),
            ("aec3771a4b", "private"),
            ("d07abe941054d444a8200595040b8166e082a62d1bff", "Mon, 21 Oct 2013 20:13:21 GMT"),
            ("9d29ad171863c78f0b97c8e9ae82ae43d3", "https://www.example.com"),
        ];
        for (hex, text) in cases {
            let bytes: Vec<u8> =
                (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
            assert_eq!(decoded(&bytes).unwrap(), text.as_bytes(), "{hex}");
            assert_eq!(encode(text.as_bytes()), bytes, "{text}");
        }
    }

    #[test]
    fn every_octet_round_trips_and_another_decoder_agrees() {
        for b in 0..=255u8 {
            for s in [vec![b], vec![b, b'a'], vec![b'0', b, 0xff, b]] {
                let encoded = encode(&s);
                assert_eq!(decoded(&encoded).unwrap(), s);
                let oracle = loona_hpack::huffman::HuffmanDecoder::new().decode(&encoded).unwrap();
                assert_eq!(oracle, s, "the other decoder reads {s:?} the same");
            }
        }
        assert_eq!(decoded(&[]).unwrap(), b"");
    }

    #[test]
    fn eos_and_bad_padding_are_refused() {
        // Padding of 8 ones (a whole extra byte), of zeros, and the 30-bit EOS inside a string.
        let mut long = encode(b"a");
        long.push(0xff);
        assert_eq!(decoded(&long), Err(Error::Padding));
        assert_eq!(decoded(&[0b0001_1000]), Err(Error::Padding), "'a' then 000 padding");
        assert_eq!(decoded(&[0xff, 0xff, 0xff, 0xfc]), Err(Error::Eos));
        assert_eq!(decoded(&[0xff, 0xff, 0xff, 0xff]), Err(Error::Eos), "EOS then two bits of padding");
        assert_eq!(decoded(&[0x07]), Ok(b"0".to_vec()), "'0' (00000) then three bits of ones");
        assert_eq!(decoded(&[0xfe]), Err(Error::Padding), "eight bits that begin a ten-bit code");
    }
}
