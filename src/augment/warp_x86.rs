//! The x86 kernels of the remap's inside runs ([`super::sample_inside`]): bilinear sampling of
//! the packed RGBM source, one pixel per step with SSE4.1 and four with AVX2. Both compute the
//! integers of the portable loop exactly (the tests compare all three with the general sampler),
//! so the output bytes do not depend on the CPU.

use super::{InsideTap, Packed, HALF, ONE, SHIFT};
use std::arch::x86_64::*;

/// [`super::sample_inside`] on the packed layout, one pixel's R, G, B and mask bit in the
/// four lanes of an SSE register: the vertical interpolation of the two columns with one
/// `madd` each (top/bottom pairs times (ONE - fy, fy)), then the horizontal one in 32-bit
/// lanes. Same integers as the scalar form; the mask lane's rounded value is 1 exactly when
/// the bilinear {0,1} field is at least 0.5 (the sum is at most ONE * ONE, so it rounds to 0
/// or 1), which is [`super::sample_mask`]'s rule.
///
/// # Safety
/// The CPU must support SSE4.1. Every tap must be an inside tap of `src` (its pixel and the
/// pixels right, below and below-right of it exist), and `img` / `msk` must hold 3 / 1 bytes
/// per tap.
#[target_feature(enable = "sse4.1")]
pub(super) unsafe fn sample_inside_sse41(
    src: &Packed,
    taps: &[InsideTap],
    img: &mut [u8],
    msk: &mut [u8],
) {
    assert!(img.len() == taps.len() * 3 && msk.len() == taps.len());
    let w = src.pair.image.width() as usize;
    let (h, rgbm) = (src.pair.image.height() as usize, src.rgbm.as_ptr());
    let zero = _mm_setzero_si128();
    let half = _mm_set1_epi32(HALF);
    let (out, n) = (img.as_mut_ptr(), taps.len());
    for (i, (t, m)) in taps.iter().zip(msk.iter_mut()).enumerate() {
        let p = t.index as usize;
        debug_assert!(p % w < w - 1 && p / w < h - 1);
        // SAFETY: an inside tap's pixel has a right neighbour in its row and a row below, so
        // both 8-byte loads (two packed pixels each) are within `rgbm` (unaligned loads).
        let (top, bot) = unsafe {
            (
                _mm_loadl_epi64(rgbm.add(p * 4).cast()),
                _mm_loadl_epi64(rgbm.add((p + w) * 4).cast()),
            )
        };
        let (fx, fy) = (i32::from(t.fx), i32::from(t.fy));
        // u16 lanes: [r0 g0 b0 m0 r1 g1 b1 m1] of the top row, likewise the bottom row.
        let top = _mm_unpacklo_epi8(top, zero);
        let bot = _mm_unpacklo_epi8(bot, zero);
        // Interleaved top/bottom: left column [r R g G b B m M], right column likewise.
        let left = _mm_unpacklo_epi16(top, bot);
        let right = _mm_unpackhi_epi16(top, bot);
        let wy = _mm_set1_epi32((fy << 16) | (ONE - fy));
        let left = _mm_madd_epi16(left, wy);
        let right = _mm_madd_epi16(right, wy);
        let v = _mm_add_epi32(
            _mm_mullo_epi32(left, _mm_set1_epi32(ONE - fx)),
            _mm_mullo_epi32(right, _mm_set1_epi32(fx)),
        );
        let v = _mm_srli_epi32::<{ SHIFT as i32 }>(_mm_add_epi32(v, half));
        let v = _mm_packus_epi16(_mm_packs_epi32(v, zero), zero);
        let rgbm = _mm_cvtsi128_si32(v) as u32;
        // The mask lane is 0 or 1: 0 or 255.
        *m = 0u8.wrapping_sub((rgbm >> 24) as u8);
        if i + 1 < n {
            // SAFETY: pixel i's 3 bytes and the next pixel's first byte (rewritten by the
            // next pixel) are within `img`, which holds 3 bytes per tap.
            unsafe { out.add(i * 3).cast::<u32>().write_unaligned(rgbm) };
        } else {
            let b = rgbm.to_le_bytes();
            img[i * 3..i * 3 + 3].copy_from_slice(&b[..3]);
        }
    }
}

/// [`super::sample_inside`] four pixels at a time with AVX2 (the last `len % 4` by
/// [`sample_inside_sse41`]), all in 16-bit lanes but the last step:
/// - vertical: `V = (ONE - fy) * top + fy * bottom` per channel of the left and right columns;
///   at most `ONE * 255`, so `mullo_epi16` and an add are exact in unsigned 16 bits;
/// - horizontal: `(ONE - fx) * VL + fx * VR` needs 32 bits. `madd_epi16` multiplies signed
///   16-bit lanes, so both columns are biased by -32768 first (`VL - 32768` fits an i16); the
///   bias comes back as the constant `32768 * ONE` (the weights sum to ONE), added with the
///   rounding term before the shift by 16.
///
/// The integers are those of the scalar form, so the bytes are the same.
///
/// # Safety
/// As [`sample_inside_sse41`], with AVX2 instead of SSE4.1.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn sample_inside_avx2(
    src: &Packed,
    taps: &[InsideTap],
    img: &mut [u8],
    msk: &mut [u8],
) {
    assert!(img.len() == taps.len() * 3 && msk.len() == taps.len());
    assert_eq!(std::mem::size_of::<InsideTap>(), 8);
    let w = src.pair.image.width() as usize;
    let rgbm = src.rgbm.as_ptr();
    let quads = taps.len() / 4;
    let zero = _mm256_setzero_si256();
    let one = _mm256_set1_epi16(ONE as i16);
    let bias = _mm256_set1_epi16(i16::MIN);
    // The bias's return (32768 * ONE) plus the rounding term.
    let add = _mm256_set1_epi32((32768 * ONE) + HALF);
    // Per 128-bit lane (two taps, 8 bytes each): a tap's fraction broadcast to 8 u16 lanes.
    let broadcast = |byte: i8| {
        let b = byte;
        _mm256_setr_epi8(
            b, -1, b, -1, b, -1, b, -1, b, -1, b, -1, b, -1, b, -1, //
            b, -1, b, -1, b, -1, b, -1, b, -1, b, -1, b, -1, b, -1,
        )
    };
    let (fy_first, fy_second) = (broadcast(5), broadcast(13));
    let (fx_first, fx_second) = (broadcast(4), broadcast(12));
    // [L R] per channel -> pairs (Lr Rr Lg Rg Lb Rb Lm Rm), 16-bit lanes.
    let pairs = _mm256_setr_epi8(
        0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15, //
        0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15,
    );
    // Four RGBM pixels -> their RGB bytes, then their four mask bytes.
    let split = _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, 3, 7, 11, 15);
    let (out, n) = (img.as_mut_ptr(), taps.len());
    for q in 0..quads {
        let i = q * 4;
        let t = &taps[i..i + 4];
        // SAFETY: four taps are 32 bytes (repr(C), size 8: asserted above).
        let tv = unsafe { _mm256_loadu_si256(t.as_ptr().cast()) };
        // Lane 0 holds taps 0 and 1, lane 1 taps 2 and 3: "first" is taps 0 and 2.
        let gather = |row: usize| -> (__m256i, __m256i) {
            let at = |k: usize| (t[k].index as usize + row) * 4;
            // SAFETY: inside taps: the pixel, its right neighbour and the row below exist, so
            // each 8-byte load (two packed pixels) is within `rgbm`.
            unsafe {
                let p01 = _mm_castpd_si128(_mm_loadh_pd(
                    _mm_castsi128_pd(_mm_loadl_epi64(rgbm.add(at(0)).cast())),
                    rgbm.add(at(1)).cast(),
                ));
                let p23 = _mm_castpd_si128(_mm_loadh_pd(
                    _mm_castsi128_pd(_mm_loadl_epi64(rgbm.add(at(2)).cast())),
                    rgbm.add(at(3)).cast(),
                ));
                let v = _mm256_set_m128i(p23, p01);
                (_mm256_unpacklo_epi8(v, zero), _mm256_unpackhi_epi8(v, zero))
            }
        };
        let (top_first, top_second) = gather(0);
        let (bot_first, bot_second) = gather(w);
        let fy1 = _mm256_shuffle_epi8(tv, fy_first);
        let fy2 = _mm256_shuffle_epi8(tv, fy_second);
        let fx1 = _mm256_shuffle_epi8(tv, fx_first);
        let fx2 = _mm256_shuffle_epi8(tv, fx_second);
        let sample = |top: __m256i, bot: __m256i, fy: __m256i, fx: __m256i| {
            let v = _mm256_add_epi16(
                _mm256_mullo_epi16(top, _mm256_sub_epi16(one, fy)),
                _mm256_mullo_epi16(bot, fy),
            );
            let v = _mm256_shuffle_epi8(_mm256_xor_si256(v, bias), pairs);
            // (ONE - fx, fx) in each 32-bit lane.
            let wx = _mm256_blend_epi16::<0b1010_1010>(_mm256_sub_epi16(one, fx), fx);
            _mm256_srli_epi32::<{ SHIFT as i32 }>(_mm256_add_epi32(_mm256_madd_epi16(v, wx), add))
        };
        let first = sample(top_first, bot_first, fy1, fx1);
        let second = sample(top_second, bot_second, fy2, fx2);
        // Per lane: [first 4 x i32, second 4 x i32] -> 8 bytes (two RGBM pixels).
        let v = _mm256_packus_epi16(_mm256_packs_epi32(first, second), zero);
        let v = _mm256_castsi256_si128(_mm256_permute4x64_epi64::<0b1000>(v));
        let v = _mm_shuffle_epi8(v, split);
        // The mask lanes are 0 or 1: 0 or 255.
        let m = _mm_sub_epi8(_mm_setzero_si128(), v);
        msk[i..i + 4].copy_from_slice(&(_mm_extract_epi32::<3>(m) as u32).to_le_bytes());
        if i * 3 + 16 <= n * 3 {
            // SAFETY: 16 bytes from pixel i are within `img` (checked); the 4 beyond this quad's
            // 12 are rewritten by the next quad.
            unsafe { _mm_storeu_si128(out.add(i * 3).cast(), v) };
        } else {
            let mut b = [0u8; 16];
            // SAFETY: `b` holds 16 bytes.
            unsafe { _mm_storeu_si128(b.as_mut_ptr().cast(), v) };
            img[i * 3..i * 3 + 12].copy_from_slice(&b[..12]);
        }
    }
    let done = quads * 4;
    // SAFETY: the caller's contract, for the remaining taps; AVX2 implies SSE4.1.
    unsafe {
        sample_inside_sse41(src, &taps[done..], &mut img[done * 3..], &mut msk[done..]);
    }
}
