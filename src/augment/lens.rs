//! Barrel and pincushion warps: inside a disc of radius R around a centre c, the source of output
//! pixel p is c + sin(pi r / 2R)^amount (p - c) with r = |p - c|; outside the disc, identity.
//! Positive amount is barrel, negative pincushion. Several warps can be chained into one map.

use super::warp::CoordMap;

/// One warp disc, in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lens {
    /// Centre x, in pixels.
    pub cx: f64,
    /// Centre y, in pixels.
    pub cy: f64,
    /// Disc radius R, in pixels; pixels at r >= R are not moved.
    pub radius: f64,
    /// Exponent of sin(pi r / 2R): > 0 barrel, < 0 pincushion, 0 identity.
    pub amount: f64,
}

impl Lens {
    /// Output -> source for one point.
    pub fn source(&self, x: f64, y: f64) -> (f64, f64) {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let r = (dx * dx + dy * dy).sqrt();
        if r >= self.radius || r == 0.0 {
            return (x, y);
        }
        let k = (std::f64::consts::PI * r / (2.0 * self.radius))
            .sin()
            .powf(self.amount);
        (self.cx + k * dx, self.cy + k * dy)
    }
}

/// The composition of warps applied in order: output = warp_n(...warp_1(image)), so the source
/// coordinate is lens_1(lens_2(...lens_n(p))). Sampling once keeps the chained form sharp.
pub struct LensChain(pub Vec<Lens>);

impl LensChain {
    /// The source coordinate of output point `p` through `lenses` (last first), as f32 (what
    /// [`CoordMap::row`] writes).
    #[inline]
    fn through(lenses: &[Lens], p: (f64, f64)) -> [f32; 2] {
        let mut p = p;
        for lens in lenses.iter().rev() {
            p = lens.source(p.0, p.1);
        }
        [p.0 as f32, p.1 as f32]
    }

    /// The source coordinates of every pixel of a `w` x `h` picture, row-major: `w * h` values
    /// of [`CoordMap::row`], in pixels.
    ///
    /// `shorter` is the field of this chain without its last lens (the chained `barrel_k` is
    /// `barrel_(k-1)` with one more disc), or `None`. Where the last lens leaves a pixel in
    /// place (outside its disc), the chain computes exactly what the shorter chain computed
    /// there, the same f64 operations on the same point, so the value is taken from `shorter`
    /// instead of running the chain's `sin` and `pow` again: the same bits either way.
    ///
    /// # Panics
    /// If `shorter` does not hold `w * h` values.
    pub fn field(&self, w: usize, h: usize, shorter: Option<&[[f32; 2]]>) -> Vec<[f32; 2]> {
        let mut out = vec![[0f32; 2]; w * h];
        match (shorter, self.0.split_last()) {
            (Some(shorter), Some((last, rest))) => {
                assert_eq!(shorter.len(), w * h, "field of the shorter chain");
                for (i, (c, &s)) in out.iter_mut().zip(shorter).enumerate() {
                    let (x, y) = ((i % w) as f64, (i / w) as f64);
                    // The chain's own steps: the last lens, then the others.
                    let p = last.source(x, y);
                    *c = if p == (x, y) {
                        s
                    } else {
                        Self::through(rest, p)
                    };
                }
            }
            _ => {
                for (y, row) in out.chunks_exact_mut(w.max(1)).enumerate() {
                    self.row(y, row);
                }
            }
        }
        out
    }
}

impl CoordMap for LensChain {
    fn row(&self, y: usize, out: &mut [[f32; 2]]) {
        for (x, c) in out.iter_mut().enumerate() {
            *c = Self::through(&self.0, (x as f64, y as f64));
        }
    }
}

/// A precomputed coordinate field ([`LensChain::field`]) as a map: row `y` is
/// `field[y * w..(y + 1) * w]`.
pub struct Field<'a> {
    /// Row-major source coordinates, `w` per row, in pixels.
    pub field: &'a [[f32; 2]],
    /// Row length, in pixels.
    pub w: usize,
}

impl CoordMap for Field<'_> {
    fn row(&self, y: usize, out: &mut [[f32; 2]]) {
        out.copy_from_slice(&self.field[y * self.w..(y + 1) * self.w]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amount_zero_and_outside_radius_are_identity() {
        let l = Lens {
            cx: 10.0,
            cy: 10.0,
            radius: 5.0,
            amount: 0.0,
        };
        assert_eq!(l.source(12.0, 11.0), (12.0, 11.0));
        let l = Lens { amount: 0.3, ..l };
        assert_eq!(l.source(30.0, 1.0), (30.0, 1.0));
    }

    #[test]
    fn a_field_built_on_the_shorter_chain_is_the_chain_s_own() {
        let (w, h) = (61, 47);
        let lens = |cx, cy, amount| Lens {
            cx,
            cy,
            radius: 18.0,
            amount,
        };
        for amount in [0.3, -0.3] {
            // Overlapping discs, one reaching past the edge.
            let all = [
                lens(18.0, 14.0, amount),
                lens(43.0, 14.0, amount),
                lens(30.0, 23.0, amount),
                lens(55.0, 40.0, amount),
            ];
            let mut shorter: Option<Vec<[f32; 2]>> = None;
            for k in 1..=all.len() {
                let chain = LensChain(all[..k].to_vec());
                let direct = chain.field(w, h, None);
                let reused = chain.field(w, h, shorter.as_deref());
                let bits = |f: &[[f32; 2]]| -> Vec<[u32; 2]> {
                    f.iter().map(|[x, y]| [x.to_bits(), y.to_bits()]).collect()
                };
                assert_eq!(bits(&reused), bits(&direct), "{k} discs, amount {amount}");
                // The discs move pixels: the chains differ from each other.
                if let Some(s) = &shorter {
                    assert_ne!(bits(s), bits(&direct), "{k} discs");
                }
                shorter = Some(direct);
            }
        }
    }

    #[test]
    fn barrel_pulls_sources_in_pincushion_pushes_out() {
        let b = Lens {
            cx: 0.0,
            cy: 0.0,
            radius: 10.0,
            amount: 0.3,
        };
        let p = Lens { amount: -0.3, ..b };
        assert!(b.source(5.0, 0.0).0 < 5.0);
        assert!(p.source(5.0, 0.0).0 > 5.0);
    }
}
