//! ggml tensor types and their dequantization to f32, following ggml's block layouts
//! (ggml-quants.c). The arithmetic order matches ggml's reference code, so results are bit-exact.

use half::{bf16, f16};

const QK: usize = 32;
const QK_K: usize = 256;
const K_SCALE_SIZE: usize = 12;

/// The ggml tensor types this importer can turn into f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

/// ggml's names by type id (ggml.h `enum ggml_type`), for naming unsupported types in errors.
const TYPE_NAMES: &[(u32, &str)] = &[
    (0, "F32"),
    (1, "F16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (6, "Q5_0"),
    (7, "Q5_1"),
    (8, "Q8_0"),
    (9, "Q8_1"),
    (10, "Q2_K"),
    (11, "Q3_K"),
    (12, "Q4_K"),
    (13, "Q5_K"),
    (14, "Q6_K"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (30, "BF16"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
];

impl GgmlType {
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    pub fn name_of_id(id: u32) -> String {
        TYPE_NAMES
            .iter()
            .find(|(i, _)| *i == id)
            .map_or_else(|| format!("unknown type {id}"), |(_, n)| n.to_string())
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
        }
    }

    /// (elements per block, bytes per block)
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (QK, 2 + QK / 2),
            Self::Q4_1 => (QK, 4 + QK / 2),
            Self::Q5_0 => (QK, 2 + 4 + QK / 2),
            Self::Q5_1 => (QK, 4 + 4 + QK / 2),
            Self::Q8_0 => (QK, 2 + QK),
            Self::Q4K => (QK_K, 4 + K_SCALE_SIZE + QK_K / 2),
            Self::Q5K => (QK_K, 4 + K_SCALE_SIZE + QK_K / 8 + QK_K / 2),
            Self::Q6K => (QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2),
        }
    }

    /// Bytes for `n` elements, or None when `n` is not a whole number of blocks.
    pub fn byte_len(self, n: u64) -> Option<u64> {
        let (elems, bytes) = self.block();
        n.is_multiple_of(elems as u64)
            .then(|| n / elems as u64 * bytes as u64)
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Dequantize `bytes` (whole blocks of `ty`) into `out`; `out.len()` must be the element count
/// whose byte length `GgmlType::byte_len` gave as `bytes.len()`.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let (elems, block_bytes) = ty.block();
    debug_assert_eq!(bytes.len() / block_bytes * elems, out.len());
    let blocks = bytes
        .chunks_exact(block_bytes)
        .zip(out.chunks_exact_mut(elems));
    match ty {
        GgmlType::F32 => {
            blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = f16_at(b, 0)),
        GgmlType::BF16 => {
            blocks.for_each(|(b, y)| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32())
        }
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| q4_0(b, y)),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| q4_1(b, y)),
        GgmlType::Q5_0 => blocks.for_each(|(b, y)| q5_0(b, y)),
        GgmlType::Q5_1 => blocks.for_each(|(b, y)| q5_1(b, y)),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| q8_0(b, y)),
        GgmlType::Q4K => blocks.for_each(|(b, y)| q4_k(b, y)),
        GgmlType::Q5K => blocks.for_each(|(b, y)| q5_k(b, y)),
        GgmlType::Q6K => blocks.for_each(|(b, y)| q6_k(b, y)),
    }
}

// block_q4_0 { f16 d; u8 qs[16] }: low nibbles are elements 0..16, high nibbles 16..32.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..18].iter().enumerate() {
        y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
        y[j + QK / 2] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

// block_q4_1 { f16 d; f16 m; u8 qs[16] }
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (j, &q) in b[4..20].iter().enumerate() {
        y[j] = (q & 0x0F) as f32 * d + m;
        y[j + QK / 2] = (q >> 4) as f32 * d + m;
    }
}

// block_q5_0 { f16 d; u8 qh[4]; u8 qs[16] }: qh holds the fifth bit of each of the 32 values.
fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for (j, &q) in b[6..22].iter().enumerate() {
        let h0 = (((qh >> j) << 4) & 0x10) as u8;
        let h1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = (((q & 0x0F) | h0) as i32 - 16) as f32 * d;
        y[j + QK / 2] = (((q >> 4) | h1) as i32 - 16) as f32 * d;
    }
}

// block_q5_1 { f16 d; f16 m; u8 qh[4]; u8 qs[16] }
fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for (j, &q) in b[8..24].iter().enumerate() {
        let h0 = (((qh >> j) << 4) & 0x10) as u8;
        let h1 = ((qh >> (j + 12)) & 0x10) as u8;
        y[j] = ((q & 0x0F) | h0) as f32 * d + m;
        y[j + QK / 2] = ((q >> 4) | h1) as f32 * d + m;
    }
}

// block_q8_0 { f16 d; i8 qs[32] }
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, &q) in b[2..34].iter().enumerate() {
        y[j] = (q as i8) as f32 * d;
    }
}

/// The 6-bit (scale, min) pair of sub-block `j` in the K-quants' packed 12-byte scales.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

// block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128] }: 8 sub-blocks of 32.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, min) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for chunk in 0..QK_K / 64 {
        let q = &qs[chunk * 32..chunk * 32 + 32];
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, min1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, min * m2 as f32);
        let out = &mut y[chunk * 64..chunk * 64 + 64];
        for l in 0..32 {
            out[l] = d1 * (q[l] & 0x0F) as f32 - min1;
            out[l + 32] = d2 * (q[l] >> 4) as f32 - min2;
        }
    }
}

// block_q5_K { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] }
fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, min) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for chunk in 0..QK_K / 64 {
        let ql = &qs[chunk * 32..chunk * 32 + 32];
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, min1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, min2) = (d * sc2 as f32, min * m2 as f32);
        let out = &mut y[chunk * 64..chunk * 64 + 64];
        for l in 0..32 {
            let hi1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let hi2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            out[l] = d1 * ((ql[l] & 0x0F) + hi1) as f32 - min1;
            out[l + 32] = d2 * ((ql[l] >> 4) + hi2) as f32 - min2;
        }
    }
}

// block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }: two halves of 128 values.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = &b[half * 64..half * 64 + 64];
        let qh = &b[128 + half * 32..128 + half * 32 + 32];
        let sc = &b[192 + half * 8..192 + half * 8 + 8];
        let out = &mut y[half * 128..half * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| d * (sc[is + k] as i8) as f32;
            out[l] = s(0) * q1 as f32;
            out[l + 32] = s(2) * q2 as f32;
            out[l + 64] = s(4) * q3 as f32;
            out[l + 96] = s(6) * q4 as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    fn run(ty: GgmlType, bytes: &[u8]) -> Vec<f32> {
        let n = bytes.len() / ty.block().1 * ty.block().0;
        let mut out = vec![0.0; n];
        dequantize(ty, bytes, &mut out);
        out
    }

    #[test]
    fn q4_0_block() {
        let mut b = h(0.5).to_vec();
        // qs[0] = 0x1F: element 0 = (0xF - 8) * 0.5 = 3.5, element 16 = (1 - 8) * 0.5 = -3.5
        b.extend([0x1F]);
        b.extend([0x88; 15]); // all the rest are 8 -> 0
        let y = run(GgmlType::Q4_0, &b);
        assert_eq!(y[0], 3.5);
        assert_eq!(y[16], -3.5);
        assert!(y
            .iter()
            .enumerate()
            .all(|(i, v)| i == 0 || i == 16 || *v == 0.0));
    }

    #[test]
    fn q4_1_block() {
        let mut b = h(0.25).to_vec();
        b.extend(h(-1.0));
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = run(GgmlType::Q4_1, &b);
        for j in 0..16 {
            assert_eq!(y[j], j as f32 * 0.25 - 1.0);
            assert_eq!(y[j + 16], (15 - j) as f32 * 0.25 - 1.0);
        }
    }

    #[test]
    fn q8_0_block() {
        let mut b = h(2.0).to_vec();
        b.extend((0..32i8).map(|j| (j - 16) as u8));
        let y = run(GgmlType::Q8_0, &b);
        let want: Vec<f32> = (0..32).map(|j| (j - 16) as f32 * 2.0).collect();
        assert_eq!(y, want);
    }

    #[test]
    fn q5_0_block_uses_the_high_bits() {
        let mut b = h(1.0).to_vec();
        // bit 0 of qh -> element 0 gets +16; bit 16 -> element 16 gets +16.
        b.extend(0x0001_0001u32.to_le_bytes());
        b.extend([0x00; 16]);
        let y = run(GgmlType::Q5_0, &b);
        assert_eq!(y[0], 0.0); // (0 | 16) - 16
        assert_eq!(y[16], 0.0);
        assert_eq!(y[1], -16.0); // (0 | 0) - 16
        assert_eq!(y[17], -16.0);
    }

    #[test]
    fn q5_1_block() {
        let mut b = h(0.5).to_vec();
        b.extend(h(1.0));
        b.extend(0x8000_0000u32.to_le_bytes()); // bit 31 -> element 31 (= 15 + 16) gets +16
        b.extend([0x21; 16]); // low nibble 1, high nibble 2
        let y = run(GgmlType::Q5_1, &b);
        assert_eq!(y[0], 1.0 * 0.5 + 1.0);
        assert_eq!(y[16], 2.0 * 0.5 + 1.0);
        assert_eq!(y[31], 18.0 * 0.5 + 1.0);
    }

    #[test]
    fn float_types() {
        let y = run(GgmlType::F16, &[h(1.5), h(-2.0)].concat());
        assert_eq!(y, vec![1.5, -2.0]);
        let y = run(GgmlType::BF16, &[0x80, 0x3F]); // bf16 0x3F80 = 1.0
        assert_eq!(y, vec![1.0]);
        let y = run(GgmlType::F32, &0.1f32.to_le_bytes());
        assert_eq!(y, vec![0.1]);
    }

    #[test]
    fn q4_k_block() {
        let mut b = h(1.0).to_vec();
        b.extend(h(0.5));
        // sub-blocks 0..4 take scale = q[j] & 63, min = q[j+4] & 63; sub-blocks 4..8 read
        // low nibbles of q[j+4] for scale and high nibbles for min (high bits from q[j-4]/q[j]).
        let mut scales = [0u8; 12];
        scales[0] = 2; // sub-block 0 scale 2
        scales[4] = 3; // sub-block 0 min 3
        scales[8] = 0x54; // sub-block 4: scale 4, min 5
        b.extend(scales);
        let mut qs = [0u8; 128];
        qs[0] = 0x07; // element 0 = 7, element 32 (sub-block 1) = 0
        qs[64] = 0x09; // element 128 (sub-block 4) = 9
        b.extend(qs);
        let y = run(GgmlType::Q4K, &b);
        assert_eq!(y[0], 2.0 * 7.0 - 1.5);
        assert_eq!(y[1], -1.5);
        assert_eq!(y[32], 0.0); // sub-block 1: scale 0, min 0
        assert_eq!(y[128], 4.0 * 9.0 - 2.5);
    }

    #[test]
    fn q6_k_block() {
        let mut b = vec![0u8; 210];
        b[0] = 0x05; // ql[0] low nibble 5: element 0
        b[128] = 0x02; // qh[0] bits 0-1 = 2 -> element 0 = 5 | 32 = 37, minus 32 = 5
        b[192] = 3; // scale of elements 0..16
        b[194] = 0xFE; // scale -2 of elements 32..48
        b[208..210].copy_from_slice(&h(0.5));
        let y = run(GgmlType::Q6K, &b);
        assert_eq!(y[0], 0.5 * 3.0 * 5.0);
        assert_eq!(y[1], 0.5 * 3.0 * -32.0);
        assert_eq!(y[32], 0.5 * -2.0 * -32.0);
    }

    #[test]
    fn byte_len_requires_whole_blocks() {
        assert_eq!(GgmlType::Q4_1.byte_len(64), Some(40));
        assert_eq!(GgmlType::Q4_1.byte_len(33), None);
        assert_eq!(GgmlType::Q6K.byte_len(256), Some(210));
        assert_eq!(GgmlType::name_of_id(10), "Q2_K");
    }
}
