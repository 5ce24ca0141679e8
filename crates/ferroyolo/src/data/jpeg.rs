//! A baseline/progressive JPEG decoder whose output matches libjpeg-turbo bit for bit.
//!
//! The reference pipeline reads images with OpenCV (`cv2.imread`), which uses libjpeg-turbo with
//! its defaults: the accurate integer IDCT ("islow"), "fancy" (triangular) chroma upsampling and
//! 16-bit fixed-point YCbCr→RGB conversion. The `image` crate decodes with zune-jpeg, whose IDCT,
//! upsampling and colour conversion round differently, so pixels come out off by one or two in
//! many places and model inputs would not match the reference. This module reimplements the same
//! arithmetic (written from the JPEG standard, ITU T.81, and the published algorithms, not copied
//! from libjpeg-turbo) so that decoded pixels are identical.
//!
//! Covered: 8-bit Huffman-coded baseline, extended-sequential and progressive frames, restart
//! intervals, 1 (grey) or 3 (YCbCr or RGB) components, any integral sampling factors.
//! Everything else (arithmetic coding, 12-bit, lossless, CMYK) reports
//! [`JpegError::Unsupported`], so that the caller can fall back to another decoder.

use std::fmt;

/// A decoded JPEG: interleaved RGB pixels plus the raw Exif block (for orientation).
#[derive(Clone, Debug)]
pub struct JpegImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes, row-major, RGB order.
    pub rgb: Vec<u8>,
    /// Payload of the APP1 "Exif" segment (starting at the TIFF header), if any.
    pub exif: Option<Vec<u8>>,
}

/// Why a JPEG could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JpegError {
    /// The data does not start with a JPEG SOI marker.
    NotJpeg,
    /// A valid JPEG feature this decoder does not implement (the caller may try another decoder).
    Unsupported(String),
    /// The data ends before the image is complete.
    Truncated,
    /// The data is malformed.
    Corrupt(String),
}

impl fmt::Display for JpegError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JpegError::NotJpeg => write!(f, "not a JPEG file (no start-of-image marker)"),
            JpegError::Unsupported(what) => write!(f, "unsupported JPEG variant: {what}"),
            JpegError::Truncated => write!(
                f,
                "JPEG data is truncated (file ends before the image is complete)"
            ),
            JpegError::Corrupt(what) => write!(f, "corrupt JPEG data: {what}"),
        }
    }
}

impl std::error::Error for JpegError {}

type Result<T> = std::result::Result<T, JpegError>;

fn corrupt<T>(what: impl Into<String>) -> Result<T> {
    Err(JpegError::Corrupt(what.into()))
}

/// Zigzag scan position → natural (row-major) position. The 16 extra entries keep a corrupt
/// run length that overshoots position 63 inside the block (it lands on the last coefficient),
/// which is how libjpeg tolerates such data instead of failing.
const ZIGZAG: [usize; 80] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
    63, 63, 63, 63, 63, 63,
];

/// Largest image side accepted (the JPEG format allows 65535; this bounds memory use).
const MAX_DIMENSION: usize = 65_535;
/// Largest pixel count accepted, to refuse decompression bombs before allocating.
const MAX_PIXELS: usize = 1 << 28;

// ---------------------------------------------------------------------------------------------
// Huffman tables

/// Bits looked up at once in the fast decoding table.
const LOOKUP_BITS: u32 = 9;

#[derive(Clone)]
struct HuffTable {
    /// For each `LOOKUP_BITS`-bit prefix: (code length, symbol); length 0 = longer code.
    lookup: Vec<(u8, u8)>,
    /// Largest code of each length (index 1..=16), -1 when there is none.
    max_code: [i32; 17],
    /// `values` index of the first code of each length, minus that code.
    val_offset: [i32; 17],
    values: Vec<u8>,
}

impl HuffTable {
    fn new(counts: &[u8; 16], values: Vec<u8>) -> Result<Self> {
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        if total != values.len() || total > 256 {
            return corrupt("bad Huffman table");
        }
        let mut lookup = vec![(0u8, 0u8); 1 << LOOKUP_BITS];
        let mut max_code = [-1i32; 17];
        let mut val_offset = [0i32; 17];
        let mut code: i32 = 0;
        let mut k = 0usize;
        for len in 1..=16usize {
            let n = counts[len - 1] as usize;
            val_offset[len] = k as i32 - code;
            for _ in 0..n {
                if code >= (1 << len) {
                    return corrupt("bad Huffman table (code space overflow)");
                }
                if len as u32 <= LOOKUP_BITS {
                    let shift = LOOKUP_BITS - len as u32;
                    let first = (code as usize) << shift;
                    for entry in &mut lookup[first..first + (1 << shift)] {
                        *entry = (len as u8, values[k]);
                    }
                }
                code += 1;
                k += 1;
            }
            if n > 0 {
                max_code[len] = code - 1;
            }
            code <<= 1;
        }
        Ok(HuffTable {
            lookup,
            max_code,
            val_offset,
            values,
        })
    }
}

/// The example tables of T.81 Annex K.3 (luminance: slot 0, chrominance: slot 1), as
/// (code counts per length, symbols). Motion-JPEG frames leave them out, so libjpeg (and hence
/// OpenCV) fills those slots with these tables when a scan needs them and none was defined.
const STD_DC_COUNTS: [[u8; 16]; 2] = [
    [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
];
const STD_AC_COUNTS: [[u8; 16]; 2] = [
    [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 125],
    [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 119],
];
#[rustfmt::skip]
const STD_AC_SYMBOLS: [[u8; 162]; 2] = [
    [
        0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07,
        0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xA1, 0x08, 0x23, 0x42, 0xB1, 0xC1, 0x15, 0x52, 0xD1, 0xF0,
        0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0A, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x25, 0x26, 0x27, 0x28,
        0x29, 0x2A, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
        0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
        0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
        0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7,
        0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5,
        0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE1, 0xE2,
        0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8,
        0xF9, 0xFA,
    ],
    [
        0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71,
        0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xA1, 0xB1, 0xC1, 0x09, 0x23, 0x33, 0x52, 0xF0,
        0x15, 0x62, 0x72, 0xD1, 0x0A, 0x16, 0x24, 0x34, 0xE1, 0x25, 0xF1, 0x17, 0x18, 0x19, 0x1A, 0x26,
        0x27, 0x28, 0x29, 0x2A, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48,
        0x49, 0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
        0x69, 0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87,
        0x88, 0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5,
        0xA6, 0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3,
        0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA,
        0xE2, 0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8,
        0xF9, 0xFA,
    ],
];

/// The Annex K table for a slot (0 or 1), `ac` selecting the AC table.
fn standard_table(ac: bool, slot: usize) -> Option<HuffTable> {
    if slot > 1 {
        return None;
    }
    let table = if ac {
        HuffTable::new(&STD_AC_COUNTS[slot], STD_AC_SYMBOLS[slot].to_vec())
    } else {
        HuffTable::new(&STD_DC_COUNTS[slot], (0..12).collect())
    };
    table.ok()
}

// ---------------------------------------------------------------------------------------------
// Entropy-coded data reader

/// Reads bits from an entropy-coded segment: removes 0xFF00 stuffing and stops at markers.
/// Past a marker or the end of the data it supplies zero bits, as libjpeg does, and remembers
/// how many such padding bits it made up so that truncation can be detected.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    nbits: u32,
    /// A marker (not stuffing) was reached at `pos`; no more data bytes until it is consumed.
    at_marker: bool,
    /// The end of the file was reached inside entropy-coded data.
    hit_eof: bool,
    /// Zero bits made up after a marker / the end of the data.
    padded_bits: u64,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8], pos: usize) -> Self {
        BitReader {
            data,
            pos,
            acc: 0,
            nbits: 0,
            at_marker: false,
            hit_eof: false,
            padded_bits: 0,
        }
    }

    /// Tops up the accumulator to at least 57 bits.
    #[inline]
    fn fill(&mut self) {
        while self.nbits <= 56 {
            let byte = if self.at_marker {
                self.padded_bits += 8;
                0
            } else if self.pos >= self.data.len() {
                self.hit_eof = true;
                self.padded_bits += 8;
                0
            } else {
                let b = self.data[self.pos];
                if b != 0xFF {
                    self.pos += 1;
                    b
                } else {
                    // 0xFF: stuffed data byte (FF 00) or a marker, possibly after fill bytes (FF FF ..).
                    let mut p = self.pos + 1;
                    while p < self.data.len() && self.data[p] == 0xFF {
                        p += 1;
                    }
                    if p >= self.data.len() {
                        self.pos = self.data.len();
                        continue;
                    }
                    if self.data[p] == 0 {
                        self.pos = p + 1;
                        0xFF
                    } else {
                        self.pos = p - 1; // points at the FF that introduces the marker
                        self.at_marker = true;
                        continue;
                    }
                }
            };
            self.acc = (self.acc << 8) | byte as u64;
            self.nbits += 8;
        }
    }

    #[inline]
    fn bits(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        if self.nbits < n {
            self.fill();
        }
        self.nbits -= n;
        ((self.acc >> self.nbits) & ((1u64 << n) - 1)) as u32
    }

    #[inline]
    fn bit(&mut self) -> bool {
        self.bits(1) != 0
    }

    /// Receives an `s`-bit magnitude category value and sign-extends it (T.81 F.2.2.1 EXTEND).
    #[inline]
    fn receive_extend(&mut self, s: u32) -> i32 {
        if s == 0 {
            return 0;
        }
        let s = s.min(16);
        let v = self.bits(s) as i32;
        if v < (1 << (s - 1)) {
            v - (1 << s) + 1
        } else {
            v
        }
    }

    /// Decodes one Huffman symbol. An invalid code yields 0, which is libjpeg's choice too.
    #[inline]
    fn decode(&mut self, t: &HuffTable) -> u8 {
        if self.nbits < 16 {
            self.fill();
        }
        let peek = ((self.acc >> (self.nbits - LOOKUP_BITS)) & ((1 << LOOKUP_BITS) - 1)) as usize;
        let (len, sym) = t.lookup[peek];
        if len != 0 {
            self.nbits -= len as u32;
            return sym;
        }
        let mut len = LOOKUP_BITS as usize + 1;
        let mut code = ((self.acc >> (self.nbits - len as u32)) & ((1 << len) - 1)) as i32;
        while code > t.max_code[len] {
            len += 1;
            if len > 16 {
                self.nbits -= 16;
                return 0;
            }
            code = ((self.acc >> (self.nbits - len as u32)) & ((1 << len) - 1)) as i32;
        }
        self.nbits -= len as u32;
        let idx = (t.val_offset[len] + code) as usize;
        t.values.get(idx).copied().unwrap_or(0)
    }

    /// Zero bits that were consumed beyond the real data (non-zero means the data ran out).
    fn consumed_padding(&self) -> u64 {
        self.padded_bits.saturating_sub(self.nbits as u64)
    }

    /// Handles a restart marker: drops buffered bits and consumes the next RSTn marker.
    fn restart(&mut self) {
        self.padded_bits = self.consumed_padding();
        self.acc = 0;
        self.nbits = 0;
        self.at_marker = false;
        // Skip anything up to the next marker (normally nothing), then take it if it is RSTn.
        while self.pos + 1 < self.data.len() {
            if self.data[self.pos] == 0xFF {
                let m = self.data[self.pos + 1];
                if (0xD0..=0xD7).contains(&m) {
                    self.pos += 2;
                    return;
                }
                if m != 0 && m != 0xFF {
                    // Some other marker: leave it; the rest of the scan reads as zeros.
                    self.at_marker = true;
                    return;
                }
            }
            self.pos += 1;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Frame and scans

#[derive(Clone)]
struct Component {
    id: u8,
    h: usize,
    v: usize,
    tq: usize,
    /// Blocks per row / column as allocated (whole MCUs).
    bw: usize,
    bh: usize,
    /// Size of the component in samples ("downsampled" size in libjpeg terms).
    dw: usize,
    dh: usize,
    /// Quantised DCT coefficients, 64 per block in natural order, blocks row-major.
    coefs: Vec<i16>,
    /// Predictor for DC differences.
    dc_pred: i32,
    dc_table: usize,
    ac_table: usize,
}

struct Frame {
    width: usize,
    height: usize,
    progressive: bool,
    comps: Vec<Component>,
    hmax: usize,
    vmax: usize,
    mcus_x: usize,
    mcus_y: usize,
}

#[derive(Default)]
struct Decoder {
    qt: [Option<[u16; 64]>; 4],
    dc_tables: [Option<HuffTable>; 4],
    ac_tables: [Option<HuffTable>; 4],
    restart_interval: usize,
    frame: Option<Frame>,
    exif: Option<Vec<u8>>,
    saw_jfif: bool,
    adobe_transform: Option<u8>,
    scans: usize,
}

fn be16(d: &[u8], at: usize) -> usize {
    ((d[at] as usize) << 8) | d[at + 1] as usize
}

/// Decodes a JPEG into RGB pixels exactly as libjpeg-turbo (default settings) would.
pub fn decode(data: &[u8]) -> Result<JpegImage> {
    if data.len() < 2 || data[0] != 0xFF || data[1] != 0xD8 {
        return Err(JpegError::NotJpeg);
    }
    let mut dec = Decoder::default();
    let mut pos = 2;
    loop {
        // Find the next marker, skipping stray bytes and fill bytes as libjpeg does.
        while pos < data.len() && data[pos] != 0xFF {
            pos += 1;
        }
        while pos < data.len() && data[pos] == 0xFF {
            pos += 1;
        }
        if pos >= data.len() {
            // The file ended without EOI. Fine if a whole image was decoded (libjpeg only warns).
            if dec.scans > 0 {
                break;
            }
            return Err(JpegError::Truncated);
        }
        let marker = data[pos];
        pos += 1;
        match marker {
            0xD9 => break,                         // EOI
            0xD0..=0xD7 | 0x01 | 0x00 => continue, // stray RST / TEM: no payload
            0xD8 => return corrupt("second start-of-image marker"),
            _ => {}
        }
        if pos + 2 > data.len() {
            return Err(JpegError::Truncated);
        }
        let len = be16(data, pos);
        if len < 2 {
            return corrupt(format!("bad length {len} of marker 0x{marker:02X}"));
        }
        if pos + len > data.len() {
            return Err(JpegError::Truncated);
        }
        let seg = &data[pos + 2..pos + len];
        pos += len;
        match marker {
            0xC0..=0xC2 => dec.parse_sof(seg, marker == 0xC2)?,
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => {
                return Err(JpegError::Unsupported(format!(
                    "SOF{} (lossless, hierarchical or arithmetic-coded)",
                    marker - 0xC0
                )))
            }
            0xC4 => dec.parse_dht(seg)?,
            0xCC => return Err(JpegError::Unsupported("arithmetic coding".into())),
            0xDB => dec.parse_dqt(seg)?,
            0xDD => {
                if seg.len() < 2 {
                    return corrupt("bad DRI segment");
                }
                dec.restart_interval = be16(seg, 0);
            }
            0xDA => pos = dec.decode_scan(data, seg, pos)?,
            0xE0 if seg.starts_with(b"JFIF\0") => dec.saw_jfif = true,
            0xE1 if seg.starts_with(b"Exif\0\0") && dec.exif.is_none() => {
                dec.exif = Some(seg[6..].to_vec())
            }
            0xEE if seg.len() >= 12 && seg.starts_with(b"Adobe") => {
                dec.adobe_transform = Some(seg[11])
            }
            _ => {} // APPn, COM, DNL and others: nothing we need
        }
    }
    dec.finish()
}

impl Decoder {
    fn parse_sof(&mut self, seg: &[u8], progressive: bool) -> Result<()> {
        if self.frame.is_some() {
            return corrupt("more than one frame header");
        }
        if seg.len() < 6 {
            return corrupt("short frame header");
        }
        if seg[0] != 8 {
            return Err(JpegError::Unsupported(format!("{}-bit samples", seg[0])));
        }
        let height = be16(seg, 1);
        let width = be16(seg, 3);
        let n = seg[5] as usize;
        if height == 0 {
            return Err(JpegError::Unsupported(
                "height defined by a DNL marker".into(),
            ));
        }
        if width == 0
            || width > MAX_DIMENSION
            || height > MAX_DIMENSION
            || width * height > MAX_PIXELS
        {
            return corrupt(format!("unreasonable image size {width}x{height}"));
        }
        if n != 1 && n != 3 {
            return Err(JpegError::Unsupported(format!("{n} colour components")));
        }
        if seg.len() < 6 + 3 * n {
            return corrupt("short frame header");
        }
        let mut comps = Vec::with_capacity(n);
        for i in 0..n {
            let c = &seg[6 + 3 * i..9 + 3 * i];
            let (h, v) = ((c[1] >> 4) as usize, (c[1] & 15) as usize);
            if !(1..=4).contains(&h) || !(1..=4).contains(&v) || c[2] > 3 {
                return corrupt("bad component sampling factors or table");
            }
            comps.push(Component {
                id: c[0],
                h,
                v,
                tq: c[2] as usize,
                bw: 0,
                bh: 0,
                dw: 0,
                dh: 0,
                coefs: Vec::new(),
                dc_pred: 0,
                dc_table: 0,
                ac_table: 0,
            });
        }
        let hmax = comps.iter().map(|c| c.h).max().unwrap_or(1);
        let vmax = comps.iter().map(|c| c.v).max().unwrap_or(1);
        let mcus_x = width.div_ceil(8 * hmax);
        let mcus_y = height.div_ceil(8 * vmax);
        for c in &mut comps {
            if hmax % c.h != 0 || vmax % c.v != 0 {
                return Err(JpegError::Unsupported(
                    "fractional chroma sampling ratio".into(),
                ));
            }
            c.bw = mcus_x * c.h;
            c.bh = mcus_y * c.v;
            c.dw = (width * c.h).div_ceil(hmax);
            c.dh = (height * c.v).div_ceil(vmax);
            c.coefs = vec![0; c.bw * c.bh * 64];
        }
        self.frame = Some(Frame {
            width,
            height,
            progressive,
            comps,
            hmax,
            vmax,
            mcus_x,
            mcus_y,
        });
        Ok(())
    }

    fn parse_dht(&mut self, mut seg: &[u8]) -> Result<()> {
        while !seg.is_empty() {
            if seg.len() < 17 {
                return corrupt("short Huffman table");
            }
            let (class, id) = (seg[0] >> 4, (seg[0] & 15) as usize);
            if class > 1 || id > 3 {
                return corrupt("bad Huffman table id");
            }
            let mut counts = [0u8; 16];
            counts.copy_from_slice(&seg[1..17]);
            let total: usize = counts.iter().map(|&c| c as usize).sum();
            if seg.len() < 17 + total {
                return corrupt("short Huffman table");
            }
            let table = HuffTable::new(&counts, seg[17..17 + total].to_vec())?;
            if class == 0 {
                self.dc_tables[id] = Some(table);
            } else {
                self.ac_tables[id] = Some(table);
            }
            seg = &seg[17 + total..];
        }
        Ok(())
    }

    fn parse_dqt(&mut self, mut seg: &[u8]) -> Result<()> {
        while !seg.is_empty() {
            let (precision, id) = (seg[0] >> 4, (seg[0] & 15) as usize);
            if id > 3 || precision > 1 {
                return corrupt("bad quantisation table id");
            }
            let size = if precision == 0 { 64 } else { 128 };
            if seg.len() < 1 + size {
                return corrupt("short quantisation table");
            }
            let mut table = [0u16; 64];
            for k in 0..64 {
                // Stored in zigzag order; kept in natural order to match the coefficients.
                table[ZIGZAG[k]] = if precision == 0 {
                    seg[1 + k] as u16
                } else {
                    ((seg[1 + 2 * k] as u16) << 8) | seg[2 + 2 * k] as u16
                };
            }
            self.qt[id] = Some(table);
            seg = &seg[1 + size..];
        }
        Ok(())
    }

    /// Parses an SOS header and decodes the scan that follows; returns where the data after it starts.
    fn decode_scan(&mut self, data: &[u8], seg: &[u8], start: usize) -> Result<usize> {
        let Some(frame) = self.frame.as_mut() else {
            return corrupt("scan before frame header");
        };
        if seg.is_empty() {
            return corrupt("short scan header");
        }
        let ns = seg[0] as usize;
        if ns == 0 || ns > 4 || seg.len() < 1 + 2 * ns + 3 {
            return corrupt("bad scan header");
        }
        let mut members = Vec::with_capacity(ns);
        for i in 0..ns {
            let id = seg[1 + 2 * i];
            let tables = seg[2 + 2 * i];
            let Some(ci) = frame.comps.iter().position(|c| c.id == id) else {
                return corrupt(format!("scan refers to unknown component {id}"));
            };
            frame.comps[ci].dc_table = (tables >> 4) as usize & 3;
            frame.comps[ci].ac_table = (tables & 15) as usize & 3;
            members.push(ci);
        }
        let p = 1 + 2 * ns;
        let (ss, se, ah, al) = (
            seg[p] as usize,
            seg[p + 1] as usize,
            (seg[p + 2] >> 4) as u32,
            (seg[p + 2] & 15) as u32,
        );
        if frame.progressive {
            let bad = ss > se
                || se > 63
                || (ss == 0 && se != 0)
                || (ss > 0 && ns != 1)
                || al > 13
                || ah > 13;
            if bad {
                return corrupt("bad progressive scan parameters");
            }
        }
        let progressive = frame.progressive;
        let (ss, se) = if progressive { (ss, se) } else { (0, 63) };

        // Check that the tables this scan needs exist.
        for &ci in &members {
            let c = &frame.comps[ci];
            let needs_dc = !progressive || (ss == 0 && ah == 0);
            let needs_ac = !progressive || ss > 0;
            if needs_dc && self.dc_tables[c.dc_table].is_none() {
                self.dc_tables[c.dc_table] = standard_table(false, c.dc_table);
                if self.dc_tables[c.dc_table].is_none() {
                    return corrupt("scan uses an undefined DC Huffman table");
                }
            }
            if needs_ac && self.ac_tables[c.ac_table].is_none() {
                self.ac_tables[c.ac_table] = standard_table(true, c.ac_table);
                if self.ac_tables[c.ac_table].is_none() {
                    return corrupt("scan uses an undefined AC Huffman table");
                }
            }
        }
        for c in &mut frame.comps {
            c.dc_pred = 0;
        }

        let mut r = BitReader::new(data, start);
        let mut eobrun: u32 = 0;
        let ctx = ScanCtx {
            dc_tables: &self.dc_tables,
            ac_tables: &self.ac_tables,
            progressive,
            ss,
            se,
            ah,
            al,
        };
        // Units of decoding between restarts: MCUs when interleaved, single blocks otherwise.
        let (units_x, units_y) = if ns == 1 {
            let c = &frame.comps[members[0]];
            (c.dw.div_ceil(8), c.dh.div_ceil(8))
        } else {
            (frame.mcus_x, frame.mcus_y)
        };
        let total = units_x * units_y;
        let ri = self.restart_interval;
        for unit in 0..total {
            if ri > 0 && unit > 0 && unit % ri == 0 {
                r.restart();
                eobrun = 0;
                for c in &mut frame.comps {
                    c.dc_pred = 0;
                }
            }
            let (ux, uy) = (unit % units_x, unit / units_x);
            // Stop at the first row decoded from beyond the end of the file: the result would
            // be an error anyway, and a bogus header could otherwise ask for a huge image.
            if ux == 0 && r.hit_eof && r.consumed_padding() > 0 {
                return Err(JpegError::Truncated);
            }
            if ns == 1 {
                let c = &mut frame.comps[members[0]];
                let off = (uy * c.bw + ux) * 64;
                ctx.block(&mut r, c, off, &mut eobrun);
            } else {
                for &ci in &members {
                    let c = &mut frame.comps[ci];
                    for v in 0..c.v {
                        for h in 0..c.h {
                            let off = ((uy * c.v + v) * c.bw + ux * c.h + h) * 64;
                            ctx.block(&mut r, c, off, &mut eobrun);
                        }
                    }
                }
            }
        }
        if r.hit_eof && r.consumed_padding() > 0 {
            return Err(JpegError::Truncated);
        }
        self.scans += 1;
        Ok(r.pos)
    }

    /// IDCT, upsampling and colour conversion of the whole frame.
    fn finish(self) -> Result<JpegImage> {
        let Some(frame) = self.frame else {
            return corrupt("no frame header");
        };
        if self.scans == 0 {
            return corrupt("no image data");
        }
        let (w, h) = (frame.width, frame.height);
        let mut planes = Vec::with_capacity(frame.comps.len());
        for c in &frame.comps {
            let Some(qt) = self.qt[c.tq] else {
                return corrupt("component uses an undefined quantisation table");
            };
            let stride = c.bw * 8;
            let mut plane = vec![0u8; stride * c.bh * 8];
            for by in 0..c.bh {
                for bx in 0..c.bw {
                    let off = (by * c.bw + bx) * 64;
                    let block: &[i16; 64] =
                        c.coefs[off..off + 64].try_into().expect("64 coefficients");
                    idct_islow(block, &qt, &mut plane[by * 8 * stride + bx * 8..], stride);
                }
            }
            planes.push(upsample(&plane, stride, c, &frame, w, h));
        }
        let mut rgb = vec![0u8; w * h * 3];
        if planes.len() == 1 {
            for (px, &y) in rgb.chunks_exact_mut(3).zip(&planes[0]) {
                px.fill(y);
            }
        } else {
            let is_rgb = if self.saw_jfif {
                false
            } else if let Some(t) = self.adobe_transform {
                t == 0
            } else {
                let ids: Vec<u8> = frame.comps.iter().map(|c| c.id).collect();
                ids == [b'R', b'G', b'B']
            };
            if is_rgb {
                for (i, px) in rgb.chunks_exact_mut(3).enumerate() {
                    px.copy_from_slice(&[planes[0][i], planes[1][i], planes[2][i]]);
                }
            } else {
                ycc_to_rgb(&planes[0], &planes[1], &planes[2], &mut rgb);
            }
        }
        Ok(JpegImage {
            width: w as u32,
            height: h as u32,
            rgb,
            exif: self.exif,
        })
    }
}

/// Per-scan constants for block decoding.
struct ScanCtx<'a> {
    dc_tables: &'a [Option<HuffTable>; 4],
    ac_tables: &'a [Option<HuffTable>; 4],
    progressive: bool,
    ss: usize,
    se: usize,
    ah: u32,
    al: u32,
}

impl ScanCtx<'_> {
    #[inline]
    fn block(&self, r: &mut BitReader, c: &mut Component, off: usize, eobrun: &mut u32) {
        let (dc_t, ac_t) = (c.dc_table, c.ac_table);
        let mut pred = c.dc_pred;
        let blk: &mut [i16; 64] = (&mut c.coefs[off..off + 64])
            .try_into()
            .expect("64 coefficients");
        if !self.progressive {
            let dc = self.dc_tables[dc_t].as_ref().expect("checked");
            let ac = self.ac_tables[ac_t].as_ref().expect("checked");
            let t = r.decode(dc) as u32;
            pred = pred.wrapping_add(r.receive_extend(t));
            blk[0] = pred as i16;
            let mut k = 1;
            while k < 64 {
                let rs = r.decode(ac);
                let (run, s) = ((rs >> 4) as usize, (rs & 15) as u32);
                if s != 0 {
                    k += run;
                    blk[ZIGZAG[k]] = r.receive_extend(s) as i16;
                } else if run == 15 {
                    k += 15;
                } else {
                    break;
                }
                k += 1;
            }
        } else if self.ss == 0 {
            if self.ah == 0 {
                let dc = self.dc_tables[dc_t].as_ref().expect("checked");
                let t = r.decode(dc) as u32;
                pred = pred.wrapping_add(r.receive_extend(t));
                blk[0] = (pred << self.al) as i16;
            } else if r.bit() {
                blk[0] |= (1i32 << self.al) as i16;
            }
        } else if self.ah == 0 {
            self.ac_first(r, blk, ac_t, eobrun);
        } else {
            self.ac_refine(r, blk, ac_t, eobrun);
        }
        c.dc_pred = pred;
    }

    /// First pass of a progressive AC band (T.81 G.1.2.2).
    fn ac_first(&self, r: &mut BitReader, blk: &mut [i16; 64], ac_t: usize, eobrun: &mut u32) {
        if *eobrun > 0 {
            *eobrun -= 1;
            return;
        }
        let ac = self.ac_tables[ac_t].as_ref().expect("checked");
        let mut k = self.ss;
        while k <= self.se {
            let rs = r.decode(ac);
            let (run, s) = ((rs >> 4) as u32, (rs & 15) as u32);
            if s != 0 {
                k += run as usize;
                blk[ZIGZAG[k]] = (r.receive_extend(s) * (1 << self.al)) as i16;
            } else if run == 15 {
                k += 15;
            } else {
                *eobrun = (1 << run) - 1;
                if run > 0 {
                    *eobrun += r.bits(run);
                }
                break;
            }
            k += 1;
        }
    }

    /// Refinement pass of a progressive AC band (T.81 G.1.2.3).
    fn ac_refine(&self, r: &mut BitReader, blk: &mut [i16; 64], ac_t: usize, eobrun: &mut u32) {
        let p1 = 1i16 << self.al;
        let m1 = (-1i16).wrapping_shl(self.al);
        let ac = self.ac_tables[ac_t].as_ref().expect("checked");
        let mut k = self.ss;
        // Appends one correction bit to an already non-zero coefficient.
        let refine = |r: &mut BitReader, coef: &mut i16| {
            if r.bit() && (*coef & p1) == 0 {
                *coef = if *coef >= 0 {
                    coef.wrapping_add(p1)
                } else {
                    coef.wrapping_add(m1)
                };
            }
        };
        if *eobrun == 0 {
            while k <= self.se {
                let rs = r.decode(ac);
                let mut run = (rs >> 4) as i32;
                let s = rs & 15;
                let mut value = 0i16;
                if s != 0 {
                    // s must be 1 here; other values are corrupt data, treated like 1 (as libjpeg).
                    value = if r.bit() { p1 } else { m1 };
                } else if run != 15 {
                    *eobrun = 1 << run;
                    if run > 0 {
                        *eobrun += r.bits(run as u32);
                    }
                    break;
                }
                // Skip `run` zero coefficients, refining the non-zero ones passed on the way.
                while k <= self.se {
                    let coef = &mut blk[ZIGZAG[k]];
                    if *coef != 0 {
                        refine(r, coef);
                    } else {
                        run -= 1;
                        if run < 0 {
                            break;
                        }
                    }
                    k += 1;
                }
                if value != 0 {
                    blk[ZIGZAG[k]] = value;
                }
                k += 1;
            }
        }
        if *eobrun > 0 {
            // Inside an end-of-band run: only correction bits for non-zero coefficients remain.
            while k <= self.se {
                let coef = &mut blk[ZIGZAG[k]];
                if *coef != 0 {
                    refine(r, coef);
                }
                k += 1;
            }
            *eobrun -= 1;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Inverse DCT: the accurate integer algorithm (Loeffler, Ligtenberg and Moschytz, as used by
// libjpeg's "islow" method) with 13-bit constants and 2 extra bits of precision between passes.

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;

/// `round(x * 2^13)` for the rotation constants of the algorithm.
const FIX_0_298631336: i64 = 2446;
const FIX_0_390180644: i64 = 3196;
const FIX_0_541196100: i64 = 4433;
const FIX_0_765366865: i64 = 6270;
const FIX_0_899976223: i64 = 7373;
const FIX_1_175875602: i64 = 9633;
const FIX_1_501321110: i64 = 12299;
const FIX_1_847759065: i64 = 15137;
const FIX_1_961570560: i64 = 16069;
const FIX_2_053119869: i64 = 16819;
const FIX_2_562915447: i64 = 20995;
const FIX_3_072711026: i64 = 25172;

#[inline]
fn descale(x: i64, n: u32) -> i64 {
    (x + (1 << (n - 1))) >> n
}

/// The 8-point 1-D transform shared by both passes: inputs in natural order, outputs
/// (before descaling) in the order 0..7, as (even + odd, even - odd) pairs.
#[inline]
fn idct_1d(i: [i64; 8]) -> [i64; 8] {
    // Even part.
    let z1 = (i[2] + i[6]) * FIX_0_541196100;
    let tmp2 = z1 - i[6] * FIX_1_847759065;
    let tmp3 = z1 + i[2] * FIX_0_765366865;
    let tmp0 = (i[0] + i[4]) << CONST_BITS;
    let tmp1 = (i[0] - i[4]) << CONST_BITS;
    let tmp10 = tmp0 + tmp3;
    let tmp13 = tmp0 - tmp3;
    let tmp11 = tmp1 + tmp2;
    let tmp12 = tmp1 - tmp2;
    // Odd part.
    let (t0, t1, t2, t3) = (i[7], i[5], i[3], i[1]);
    let z1 = t0 + t3;
    let z2 = t1 + t2;
    let z3 = t0 + t2;
    let z4 = t1 + t3;
    let z5 = (z3 + z4) * FIX_1_175875602;
    let t0 = t0 * FIX_0_298631336;
    let t1 = t1 * FIX_2_053119869;
    let t2 = t2 * FIX_3_072711026;
    let t3 = t3 * FIX_1_501321110;
    let z1 = -z1 * FIX_0_899976223;
    let z2 = -z2 * FIX_2_562915447;
    let z3 = -z3 * FIX_1_961570560 + z5;
    let z4 = -z4 * FIX_0_390180644 + z5;
    let t0 = t0 + z1 + z3;
    let t1 = t1 + z2 + z4;
    let t2 = t2 + z2 + z3;
    let t3 = t3 + z1 + z4;
    [
        tmp10 + t3,
        tmp11 + t2,
        tmp12 + t1,
        tmp13 + t0,
        tmp13 - t0,
        tmp12 - t1,
        tmp11 - t2,
        tmp10 - t3,
    ]
}

/// Maps an IDCT output (centred on 0) to a sample. libjpeg indexes a table with the value
/// masked to 10 bits, so out-of-range values from corrupt data wrap the same way here.
#[inline]
fn range_limit_idct(x: i64) -> u8 {
    let t = (x & 1023) as i32;
    match t {
        0..=127 => (t + 128) as u8,
        128..=511 => 255,
        512..=895 => 0,
        _ => (t - 896) as u8,
    }
}

/// Dequantises and inverse-transforms one block into `out` (8 rows of `stride`).
fn idct_islow(coefs: &[i16; 64], qt: &[u16; 64], out: &mut [u8], stride: usize) {
    // Blocks with only a DC term (most of them in smooth areas) are flat. The shortcut gives
    // exactly what the full transform gives: both passes reduce to the same shifts.
    if coefs[1..].iter().all(|&c| c == 0) {
        let dc = (coefs[0] as i64 * qt[0] as i64) << PASS1_BITS;
        let v = range_limit_idct(descale(dc as i32 as i64, PASS1_BITS + 3));
        for row in 0..8 {
            out[row * stride..row * stride + 8].fill(v);
        }
        return;
    }
    let mut ws = [0i32; 64];
    // Pass 1: columns. Results are scaled up by 2^PASS1_BITS and kept in 32-bit ints.
    for col in 0..8 {
        let mut input = [0i64; 8];
        for (row, v) in input.iter_mut().enumerate() {
            *v = coefs[row * 8 + col] as i64 * qt[row * 8 + col] as i64;
        }
        if input[1..].iter().all(|&v| v == 0) {
            // Same result as the full column transform, much cheaper.
            let dc = (input[0] << PASS1_BITS) as i32;
            for row in 0..8 {
                ws[row * 8 + col] = dc;
            }
            continue;
        }
        let o = idct_1d(input);
        for (row, &v) in o.iter().enumerate() {
            ws[row * 8 + col] = descale(v, CONST_BITS - PASS1_BITS) as i32;
        }
    }
    // Pass 2: rows; removes the pass-1 scaling and the factor 8 of the 2-D transform.
    for row in 0..8 {
        let line = &mut out[row * stride..row * stride + 8];
        let w = &ws[row * 8..row * 8 + 8];
        if w[1..].iter().all(|&v| v == 0) {
            line.fill(range_limit_idct(descale(w[0] as i64, PASS1_BITS + 3)));
            continue;
        }
        let o = idct_1d(std::array::from_fn(|k| w[k] as i64));
        for (dst, &v) in line.iter_mut().zip(o.iter()) {
            *dst = range_limit_idct(descale(v, CONST_BITS + PASS1_BITS + 3));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Upsampling

/// Brings one component to full resolution (`w` x `h`).
///
/// 2:1 horizontal and/or vertical ratios use libjpeg's "fancy" triangular filter (3/4 of the
/// nearer sample, 1/4 of the farther one, with alternating rounding biases); other ratios
/// replicate samples. Sample rows/columns outside the component are replaced by its edge.
fn upsample(
    plane: &[u8],
    stride: usize,
    c: &Component,
    frame: &Frame,
    w: usize,
    h: usize,
) -> Vec<u8> {
    let (hr, vr) = (frame.hmax / c.h, frame.vmax / c.v);
    let (dw, dh) = (c.dw, c.dh);
    let mut out = vec![0u8; w * h];
    let row = |r: usize| &plane[r * stride..r * stride + dw];
    match (hr, vr) {
        (1, 1) => {
            for y in 0..h {
                out[y * w..(y + 1) * w].copy_from_slice(&row(y)[..w]);
            }
        }
        (2, 2) if dw > 2 => {
            let mut line = vec![0u8; 2 * dw];
            for y in 0..h {
                let r = y / 2;
                // Even output rows lean on the row above, odd ones on the row below.
                let near = row(r);
                let far = if y % 2 == 0 {
                    row(r.saturating_sub(1))
                } else {
                    row((r + 1).min(dh - 1))
                };
                let o = &mut out[y * w..(y + 1) * w];
                let colsum = |i: usize| near[i] as i32 * 3 + far[i] as i32;
                line[0] = ((colsum(0) * 4 + 8) >> 4) as u8;
                line[1] = ((colsum(0) * 3 + colsum(1) + 7) >> 4) as u8;
                for i in 1..dw - 1 {
                    let this = colsum(i);
                    line[2 * i] = ((this * 3 + colsum(i - 1) + 8) >> 4) as u8;
                    line[2 * i + 1] = ((this * 3 + colsum(i + 1) + 7) >> 4) as u8;
                }
                let last = colsum(dw - 1);
                line[2 * dw - 2] = ((last * 3 + colsum(dw - 2) + 8) >> 4) as u8;
                line[2 * dw - 1] = ((last * 4 + 7) >> 4) as u8;
                o.copy_from_slice(&line[..w]);
            }
        }
        (2, 1) if dw > 2 => {
            let mut line = vec![0u8; 2 * dw];
            for y in 0..h {
                let s = row(y);
                line[0] = s[0];
                line[1] = ((s[0] as i32 * 3 + s[1] as i32 + 2) >> 2) as u8;
                for i in 1..dw - 1 {
                    let this = s[i] as i32 * 3;
                    line[2 * i] = ((this + s[i - 1] as i32 + 1) >> 2) as u8;
                    line[2 * i + 1] = ((this + s[i + 1] as i32 + 2) >> 2) as u8;
                }
                line[2 * dw - 2] = ((s[dw - 1] as i32 * 3 + s[dw - 2] as i32 + 1) >> 2) as u8;
                line[2 * dw - 1] = s[dw - 1];
                out[y * w..(y + 1) * w].copy_from_slice(&line[..w]);
            }
        }
        (1, 2) => {
            for y in 0..h {
                let r = y / 2;
                let near = row(r);
                let (far, bias) = if y % 2 == 0 {
                    (row(r.saturating_sub(1)), 1)
                } else {
                    (row((r + 1).min(dh - 1)), 2)
                };
                for (x, o) in out[y * w..(y + 1) * w].iter_mut().enumerate() {
                    *o = ((near[x] as i32 * 3 + far[x] as i32 + bias) >> 2) as u8;
                }
            }
        }
        _ => {
            // Plain replication (also libjpeg's choice for 2:1 when the component is <= 2 wide).
            for y in 0..h {
                let s = &plane[(y / vr) * stride..];
                for (x, o) in out[y * w..(y + 1) * w].iter_mut().enumerate() {
                    *o = s[x / hr];
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Colour conversion

/// YCbCr → RGB with JFIF coefficients in 16-bit fixed point, rounded like libjpeg's tables.
fn ycc_to_rgb(y: &[u8], cb: &[u8], cr: &[u8], rgb: &mut [u8]) {
    const SCALE: u32 = 16;
    const HALF: i32 = 1 << (SCALE - 1);
    // round(x * 2^16)
    const FIX_1_40200: i32 = 91881;
    const FIX_1_77200: i32 = 116130;
    const FIX_0_71414: i32 = 46802;
    const FIX_0_34414: i32 = 22554;
    let mut cr_r = [0i32; 256];
    let mut cb_b = [0i32; 256];
    let mut cr_g = [0i32; 256];
    let mut cb_g = [0i32; 256];
    for i in 0..256 {
        let x = i as i32 - 128;
        cr_r[i] = (FIX_1_40200 * x + HALF) >> SCALE;
        cb_b[i] = (FIX_1_77200 * x + HALF) >> SCALE;
        cr_g[i] = -FIX_0_71414 * x;
        cb_g[i] = -FIX_0_34414 * x + HALF;
    }
    let clamp = |v: i32| v.clamp(0, 255) as u8;
    let samples = y.iter().zip(cb).zip(cr);
    for (px, ((&yy, &b), &r)) in rgb.chunks_exact_mut(3).zip(samples) {
        let (yy, b, r) = (yy as i32, b as usize, r as usize);
        px[0] = clamp(yy + cr_r[r]);
        px[1] = clamp(yy + ((cb_g[b] + cr_g[r]) >> SCALE));
        px[2] = clamp(yy + cb_b[b]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_jpeg() {
        assert_eq!(decode(b"GIF89a").unwrap_err(), JpegError::NotJpeg);
        assert_eq!(decode(&[]).unwrap_err(), JpegError::NotJpeg);
    }

    #[test]
    fn truncated_header_is_reported() {
        assert_eq!(decode(&[0xFF, 0xD8]).unwrap_err(), JpegError::Truncated);
        assert_eq!(
            decode(&[0xFF, 0xD8, 0xFF, 0xDB, 0x00]).unwrap_err(),
            JpegError::Truncated
        );
    }

    /// A smooth colour test picture, JPEG-encoded by the `image` crate (baseline, Annex K tables).
    fn encoded_sample(w: u32, h: u32) -> (image::RgbImage, Vec<u8>) {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                ((x + y) * 3 % 256) as u8,
            ])
        });
        let mut bytes = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
            .encode_image(&img)
            .unwrap();
        (img, bytes)
    }

    #[test]
    fn agrees_with_the_image_crate_decoder() {
        // zune-jpeg rounds differently (by a few levels), but the pictures must agree.
        for (w, h) in [(37, 23), (1, 1), (16, 16), (90, 3), (200, 120)] {
            let (_, bytes) = encoded_sample(w, h);
            let ours = decode(&bytes).unwrap();
            let theirs = image::load_from_memory(&bytes).unwrap().into_rgb8();
            assert_eq!((ours.width, ours.height), theirs.dimensions());
            let diffs = ours
                .rgb
                .iter()
                .zip(theirs.as_raw())
                .map(|(&a, &b)| a.abs_diff(b));
            let max = diffs.max().unwrap();
            assert!(max <= 6, "{w}x{h}: max diff {max}");
        }
    }

    #[test]
    fn missing_huffman_tables_default_to_annex_k() {
        let (_, bytes) = encoded_sample(37, 23);
        // Drop every DHT segment (as Motion-JPEG frames do); the encoder used the Annex K tables.
        let mut stripped = bytes[..2].to_vec();
        let mut pos = 2;
        while bytes[pos + 1] != 0xDA {
            let len = be16(&bytes, pos + 2);
            if bytes[pos + 1] != 0xC4 {
                stripped.extend_from_slice(&bytes[pos..pos + 2 + len]);
            }
            pos += 2 + len;
        }
        stripped.extend_from_slice(&bytes[pos..]);
        assert!(stripped.len() < bytes.len());
        assert_eq!(decode(&stripped).unwrap().rgb, decode(&bytes).unwrap().rgb);
    }

    #[test]
    fn truncated_scan_is_reported_and_missing_eoi_is_not() {
        let (_, bytes) = encoded_sample(64, 64);
        let cut = bytes.len() - 40;
        assert_eq!(decode(&bytes[..cut]).unwrap_err(), JpegError::Truncated);
        // Only the EOI marker missing: the image is complete, libjpeg accepts it with a warning.
        assert!(decode(&bytes[..bytes.len() - 2]).is_ok());
    }

    #[test]
    fn dc_only_block_is_flat() {
        // A DC coefficient of 8*d (after dequantisation) is a flat block of value 128 + d.
        let mut coefs = [0i16; 64];
        coefs[0] = 10;
        let qt = [8u16; 64];
        let mut out = [0u8; 64];
        idct_islow(&coefs, &qt, &mut out, 8);
        assert!(out.iter().all(|&v| v == 138), "{out:?}");
    }

    #[test]
    fn range_limit_matches_libjpeg_table() {
        assert_eq!(range_limit_idct(-128), 0);
        assert_eq!(range_limit_idct(0), 128);
        assert_eq!(range_limit_idct(127), 255);
        assert_eq!(range_limit_idct(300), 255);
        assert_eq!(range_limit_idct(-300), 0);
    }
}
