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

impl CoordMap for LensChain {
    fn row(&self, y: usize, out: &mut [[f32; 2]]) {
        for (x, c) in out.iter_mut().enumerate() {
            let mut p = (x as f64, y as f64);
            for lens in self.0.iter().rev() {
                p = lens.source(p.0, p.1);
            }
            *c = [p.0 as f32, p.1 as f32];
        }
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
