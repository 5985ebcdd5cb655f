//! Affine variants (rotation, shrink, shear) as 3x3 matrices (nalgebra) that take an output pixel
//! to its source coordinate, about the image centre ((W-1)/2, (H-1)/2) in pixel-centre coordinates.

use nalgebra::Matrix3;

use super::warp::CoordMap;

/// Output -> source map of a rotation by `deg` degrees; positive turns the picture counter-clockwise
/// on screen (y down), OpenCV's `getRotationMatrix2D` convention.
pub fn rotation(deg: f64, w: u32, h: u32) -> Matrix3<f64> {
    let t = deg.to_radians();
    let (s, c) = t.sin_cos();
    // Forward (source -> output) is [c s; -s c] about the centre; the inverse is its transpose.
    let inv = Matrix3::new(c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0);
    about_centre(inv, w, h)
}

/// Output -> source map of a scaling by `r` about the centre.
pub fn shrink(r: f64, w: u32, h: u32) -> Matrix3<f64> {
    let inv = Matrix3::new(1.0 / r, 0.0, 0.0, 0.0, 1.0 / r, 0.0, 0.0, 0.0, 1.0);
    about_centre(inv, w, h)
}

/// Output -> source map of x' = x + s (y - cy).
pub fn shear_x(s: f64, w: u32, h: u32) -> Matrix3<f64> {
    let inv = Matrix3::new(1.0, -s, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0);
    about_centre(inv, w, h)
}

/// Output -> source map of y' = y + s (x - cx).
pub fn shear_y(s: f64, w: u32, h: u32) -> Matrix3<f64> {
    let inv = Matrix3::new(1.0, 0.0, 0.0, -s, 1.0, 0.0, 0.0, 0.0, 1.0);
    about_centre(inv, w, h)
}

/// Conjugates a linear map so that it acts about the image centre.
fn about_centre(linear: Matrix3<f64>, w: u32, h: u32) -> Matrix3<f64> {
    let cx = (f64::from(w) - 1.0) / 2.0;
    let cy = (f64::from(h) - 1.0) / 2.0;
    let to = Matrix3::new(1.0, 0.0, cx, 0.0, 1.0, cy, 0.0, 0.0, 1.0);
    let from = Matrix3::new(1.0, 0.0, -cx, 0.0, 1.0, -cy, 0.0, 0.0, 1.0);
    to * linear * from
}

/// An affine output -> source map usable by [`super::warp::remap`].
pub struct Affine(pub Matrix3<f64>);

impl CoordMap for Affine {
    fn row(&self, y: usize, out: &mut [[f32; 2]]) {
        let m = &self.0;
        let yf = y as f64;
        let bx = m[(0, 1)] * yf + m[(0, 2)];
        let by = m[(1, 1)] * yf + m[(1, 2)];
        for (x, c) in out.iter_mut().enumerate() {
            let xf = x as f64;
            *c = [(m[(0, 0)] * xf + bx) as f32, (m[(1, 0)] * xf + by) as f32];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nalgebra::Vector3;

    fn apply(m: &Matrix3<f64>, x: f64, y: f64) -> (f64, f64) {
        let v = m * Vector3::new(x, y, 1.0);
        (v.x, v.y)
    }

    #[test]
    fn rotation_by_90_is_counter_clockwise_on_screen() {
        // Output pixel above the centre must come from the source pixel right of the centre.
        let m = rotation(90.0, 11, 11);
        let (sx, sy) = apply(&m, 5.0, 2.0);
        assert!(
            (sx - 8.0).abs() < 1e-9 && (sy - 5.0).abs() < 1e-9,
            "{sx} {sy}"
        );
    }

    #[test]
    fn zero_parameters_are_identity() {
        for m in [
            rotation(0.0, 9, 7),
            shrink(1.0, 9, 7),
            shear_x(0.0, 9, 7),
            shear_y(0.0, 9, 7),
        ] {
            assert!((m - Matrix3::identity()).abs().max() < 1e-12);
        }
    }

    #[test]
    fn shear_x_moves_rows_below_centre_right() {
        let m = shear_x(0.1, 11, 11);
        // Output (5 + 0.5, 10) comes from source (5, 10): x' = x + 0.1 * (10 - 5).
        let (sx, sy) = apply(&m, 5.5, 10.0);
        assert!((sx - 5.0).abs() < 1e-9 && (sy - 10.0).abs() < 1e-9);
    }
}
