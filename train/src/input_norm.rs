//! The network's input normalization (`train.input_norm`), one function for every place a batch
//! enters the network (training, validation, previews, evaluation, inference): optional local
//! contrast normalization (each channel minus its gaussian blur), then a per-channel affine map.

use tch::{Kind, Tensor};

use fundus_pipeline::recipe_config::InputNorm;
use fundus_pipeline::scoring::FOV_MIN_LEVEL;

/// x [N, 3, H, W] on the [0, 1] scale -> (LC(x) - mean_c) / std_c per channel, where LC is
/// [`local_contrast`] when `local_contrast_sigma` is set and the identity otherwise; `None`
/// returns x. Output fp32-computed, in x's kind.
pub fn normalize(x: &Tensor, norm: Option<&InputNorm>) -> Tensor {
    match norm {
        None => x.shallow_clone(),
        Some(n) => {
            let dev = x.device();
            let mut xf = x.to_kind(Kind::Float);
            if let Some(sigma) = n.local_contrast_sigma {
                xf = local_contrast(&xf, sigma);
            }
            let mean = Tensor::from_slice(&n.mean.map(|v| v as f32))
                .view([1, 3, 1, 1])
                .to_device(dev);
            let std = Tensor::from_slice(&n.std.map(|v| v as f32))
                .view([1, 3, 1, 1])
                .to_device(dev);
            ((xf - mean) / std).to_kind(x.kind())
        }
    }
}

/// The normalized 1-D gaussian of `sigma` pixels over -r..=r, r = ceil(3 sigma).
pub fn gaussian_kernel(sigma: f64) -> Vec<f32> {
    let r = (3.0 * sigma).ceil().max(1.0) as i64;
    let w: Vec<f64> = (-r..=r)
        .map(|i| (-((i * i) as f64) / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f64 = w.iter().sum();
    w.iter().map(|v| (v / sum) as f32).collect()
}

/// Local contrast normalization inside the field of view, x [N, C, H, W] fp32 on [0, 1], sigma
/// in pixels: (x - B) m, where m is the estimated field of view (brightest channel >=
/// [`FOV_MIN_LEVEL`]/255, as `scoring::fov_from_image` without its row filling) and
/// B = G_sigma * (x m) / G_sigma * m is the gaussian blur of the FOV pixels only (normalized
/// convolution, Knutsson & Westin 1993), so the dark surround neither darkens the blur nor
/// leaves a bright ring at the FOV's rim; outside the FOV the output is 0. Graham 2015's
/// diabetic-retinopathy preprocessing `4 (x - G_sigma * x)` with the gain and offset left to
/// `input_norm`'s std and mean. Separable gaussian ([`gaussian_kernel`]), the border
/// edge-replicated; a constant FOV maps to 0.
pub fn local_contrast(x: &Tensor, sigma: f64) -> Tensor {
    let m = x
        .amax([1i64].as_slice(), true)
        .ge(f64::from(FOV_MIN_LEVEL) / 255.0)
        .to_kind(Kind::Float);
    let num = blur(&(x * &m), sigma);
    let den = blur(&m, sigma);
    let b = num / den.clamp_min(1e-6);
    (x - b) * m
}

/// Separable gaussian blur of every channel of x [N, C, H, W] fp32, border edge-replicated.
fn blur(x: &Tensor, sigma: f64) -> Tensor {
    let c = x.size()[1];
    let k = gaussian_kernel(sigma);
    let r = (k.len() / 2) as i64;
    let kt = Tensor::from_slice(&k).to_device(x.device());
    let kx = kt.view([1, 1, 1, -1]).repeat([c, 1, 1, 1]);
    let ky = kt.view([1, 1, -1, 1]).repeat([c, 1, 1, 1]);
    let none: Option<&Tensor> = None;
    x.replication_pad2d([r, r, 0, 0])
        .conv2d(&kx, none, [1, 1], [0, 0], [1, 1], c)
        .replication_pad2d([0, 0, r, r])
        .conv2d(&ky, none, [1, 1], [0, 0], [1, 1], c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_each_channel() {
        let x = Tensor::from_slice(&[0.5f32, 0.2, 0.1]).view([1, 3, 1, 1]);
        let n = InputNorm {
            mean: [0.4, 0.1, 0.0],
            std: [0.1, 0.05, 0.02],
            local_contrast_sigma: None,
        };
        let y = Vec::<f32>::try_from(normalize(&x, Some(&n)).flatten(0, -1)).unwrap();
        for (a, b) in y.iter().zip([1.0f32, 2.0, 5.0]) {
            assert!((a - b).abs() < 1e-5, "{y:?}");
        }
        let same = Vec::<f32>::try_from(normalize(&x, None).flatten(0, -1)).unwrap();
        assert_eq!(same, [0.5, 0.2, 0.1]);
    }

    #[test]
    fn gaussian_kernel_sums_to_one_and_is_symmetric() {
        let k = gaussian_kernel(2.0);
        assert_eq!(k.len(), 13);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        for i in 0..k.len() {
            assert_eq!(k[i], k[k.len() - 1 - i]);
        }
        assert!(k[6] > k[5] && k[5] > k[4]);
    }

    #[test]
    fn local_contrast_removes_a_gradient_and_keeps_a_dip() {
        // 2 images x 3 channels of 48x48: a linear illumination ramp (0.2 -> 0.67 across x, the
        // slope of a real photograph's vignetting at this scale is smaller), plus in image 0 a
        // 3x3 dip of 0.05 at (24, 24).
        let (n, c, s) = (2i64, 3i64, 48i64);
        let mut v = vec![0f32; (n * c * s * s) as usize];
        for i in 0..n {
            for ch in 0..c {
                for y in 0..s {
                    for x in 0..s {
                        let mut p = 0.2 + 0.01 * x as f32;
                        if i == 0 && (23..26).contains(&x) && (23..26).contains(&y) {
                            p -= 0.05;
                        }
                        v[(((i * c + ch) * s + y) * s + x) as usize] = p;
                    }
                }
            }
        }
        let t = Tensor::from_slice(&v).view([n, c, s, s]);
        let lc = local_contrast(&t, 4.0);
        assert_eq!(lc.size(), [n, c, s, s]);
        let at = |img: i64, ch: i64, y: i64, x: i64| lc.double_value(&[img, ch, y, x]);
        // Away from the border the linear ramp is gone (a symmetric kernel preserves it).
        for x in [14, 20, 30, 34] {
            assert!(at(1, 1, 24, x).abs() < 1e-4, "x {x}: {}", at(1, 1, 24, x));
        }
        // The dip stays a dip of about its depth (less the blur's own share of it).
        let d = at(0, 1, 24, 24);
        assert!((-0.05..-0.03).contains(&d), "{d}");
        // Affine map after it: mean 0, std 0.01 -> the dip is a few units.
        let norm = InputNorm {
            mean: [0.0; 3],
            std: [0.01; 3],
            local_contrast_sigma: Some(4.0),
        };
        let y = normalize(&t, Some(&norm));
        assert!((y.double_value(&[0, 0, 24, 24]) - d / 0.01).abs() < 1e-3);
    }

    #[test]
    fn local_contrast_ignores_the_dark_surround() {
        // A uniform disc (0.5) of radius 20 in a black 48x48 surround: inside the disc nothing
        // is left (no bright ring at the rim), outside it is 0.
        let s = 48i64;
        let mut v = vec![0f32; (3 * s * s) as usize];
        for ch in 0..3 {
            for y in 0..s {
                for x in 0..s {
                    let d = ((x as f32 - 24.0).powi(2) + (y as f32 - 24.0).powi(2)).sqrt();
                    if d <= 20.0 {
                        v[((ch * s + y) * s + x) as usize] = 0.5;
                    }
                }
            }
        }
        let lc = local_contrast(&Tensor::from_slice(&v).view([1, 3, s, s]), 6.0);
        let max = lc.abs().max().double_value(&[]);
        assert!(max < 1e-5, "largest |LC| {max}");
    }
}
