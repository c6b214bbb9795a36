//! What a file is, from its first bytes (never from its name): the MIME type, whether it is an
//! executable (refused whatever the kind), and an image's width and height from its header.

/// The MIME type the content's signature says, `None` for an executable (or a script with a
/// `#!` line). Unknown binary content is `application/octet-stream`; text (UTF-8 without NULs in
/// what was read) is `text/plain`.
pub fn mime(head: &[u8]) -> Option<&'static str> {
    let starts = |sig: &[u8]| head.starts_with(sig);
    let at = |off: usize, sig: &[u8]| head.len() >= off + sig.len() && &head[off..off + sig.len()] == sig;
    // Executables: PE (MZ), ELF, Mach-O (both byte orders, 32/64-bit, fat), scripts.
    const EXECUTABLES: &[&[u8]] = &[
        b"MZ",
        b"\x7fELF",
        b"\xfe\xed\xfa\xce",
        b"\xfe\xed\xfa\xcf",
        b"\xce\xfa\xed\xfe",
        b"\xcf\xfa\xed\xfe",
        b"\xca\xfe\xba\xbe",
        b"#!",
    ];
    if EXECUTABLES.iter().any(|s| starts(s)) {
        return None;
    }
    let ftyp = at(4, b"ftyp").then(|| head.get(8..12)).flatten();
    Some(match () {
        _ if starts(b"\xff\xd8\xff") => "image/jpeg",
        _ if starts(b"\x89PNG\r\n\x1a\n") => "image/png",
        _ if starts(b"GIF87a") || starts(b"GIF89a") => "image/gif",
        _ if starts(b"RIFF") && at(8, b"WEBP") => "image/webp",
        _ if starts(b"BM") && head.len() > 14 => "image/bmp",
        _ if matches!(ftyp, Some(b"heic" | b"heix" | b"mif1" | b"msf1")) => "image/heic",
        _ if matches!(ftyp, Some(b"M4A " | b"M4B ")) => "audio/mp4",
        _ if matches!(ftyp, Some(b"qt  ")) => "video/quicktime",
        _ if ftyp.is_some() => "video/mp4",
        _ if starts(b"\x1a\x45\xdf\xa3") => "video/webm",
        _ if starts(b"ID3") || (head.len() > 1 && head[0] == 0xff && head[1] & 0xe0 == 0xe0 && head[1] & 0x06 != 0) => {
            "audio/mpeg"
        }
        _ if head.len() > 1 && head[0] == 0xff && head[1] & 0xf6 == 0xf0 => "audio/aac",
        _ if starts(b"OggS") => "audio/ogg",
        _ if starts(b"RIFF") && at(8, b"WAVE") => "audio/wav",
        _ if starts(b"#!AMR") => "audio/amr",
        _ if starts(b"fLaC") => "audio/flac",
        _ if starts(b"%PDF-") => "application/pdf",
        _ if starts(b"PK\x03\x04") => "application/zip",
        _ if is_text(head) => "text/plain",
        _ => "application/octet-stream",
    })
}

/// UTF-8 without NULs (the last character may be cut by the end of what was read).
fn is_text(head: &[u8]) -> bool {
    if head.is_empty() || head.contains(&0) {
        return false;
    }
    match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && e.valid_up_to() + 4 > head.len(),
    }
}

/// An image's width and height from its header (PNG, GIF, JPEG, WebP), without decoding it.
pub fn dimensions(mime: &str, head: &[u8]) -> Option<(u32, u32)> {
    let be16 = |i: usize| head.get(i..i + 2).map(|b| u32::from(u16::from_be_bytes([b[0], b[1]])));
    let le16 = |i: usize| head.get(i..i + 2).map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])));
    let be32 = |i: usize| head.get(i..i + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let le24 = |i: usize| head.get(i..i + 3).map(|b| u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16);
    match mime {
        "image/png" => Some((be32(16)?, be32(20)?)),
        "image/gif" => Some((le16(6)?, le16(8)?)),
        "image/webp" => match head.get(12..16)? {
            b"VP8X" => Some((le24(24)? + 1, le24(27)? + 1)),
            b"VP8 " => Some((le16(26)? & 0x3fff, le16(28)? & 0x3fff)),
            b"VP8L" => {
                let b = head.get(21..25)?;
                let bits = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                Some(((bits & 0x3fff) + 1, ((bits >> 14) & 0x3fff) + 1))
            }
            _ => None,
        },
        "image/jpeg" => {
            // Walk the segments to a start-of-frame marker (SOF0–SOF15 but DHT, JPG, DAC).
            let mut i = 2;
            while i + 9 < head.len() {
                if head[i] != 0xff {
                    return None;
                }
                let marker = head[i + 1];
                if marker == 0xff {
                    i += 1;
                    continue;
                }
                if (0xc0..=0xcf).contains(&marker) && !matches!(marker, 0xc4 | 0xc8 | 0xcc) {
                    return Some((be16(i + 7)?, be16(i + 5)?));
                }
                i += 2 + be16(i + 2)? as usize;
            }
            None
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        v.extend_from_slice(&w.to_be_bytes());
        v.extend_from_slice(&h.to_be_bytes());
        v.extend_from_slice(&[8, 6, 0, 0, 0]);
        v
    }

    #[test]
    fn content_decides_not_the_name() {
        assert_eq!(mime(&png(3, 2)), Some("image/png"));
        assert_eq!(dimensions("image/png", &png(640, 480)), Some((640, 480)));
        assert_eq!(mime(b"MZ\x90\0\x03"), None, "a Windows executable");
        assert_eq!(mime(b"\x7fELF\x02\x01"), None);
        assert_eq!(mime(b"#!/bin/sh\nrm -rf /"), None);
        assert_eq!(mime(b"%PDF-1.7\n"), Some("application/pdf"));
        assert_eq!(mime(b"\0\0\0\x18ftypmp42\0\0\0\0"), Some("video/mp4"));
        assert_eq!(mime(b"\0\0\0\x18ftypheic\0\0\0\0"), Some("image/heic"));
        assert_eq!(mime(b"ID3\x04\0"), Some("audio/mpeg"));
        assert_eq!(mime("héllo wörld".as_bytes()), Some("text/plain"));
        assert_eq!(mime(b"\x01\x02\x00\x03"), Some("application/octet-stream"));
        assert_eq!(mime(b"GIF89a\x10\x00\x20\x00"), Some("image/gif"));
        assert_eq!(dimensions("image/gif", b"GIF89a\x10\x00\x20\x00"), Some((16, 32)));
        // A JPEG: SOI, an APP0 segment, then SOF0 with height 200, width 300.
        let jpeg = b"\xff\xd8\xff\xe0\x00\x04ab\xff\xc0\x00\x11\x08\x00\xc8\x01\x2c\x03";
        assert_eq!(mime(jpeg), Some("image/jpeg"));
        assert_eq!(dimensions("image/jpeg", jpeg), Some((300, 200)));
    }
}
