//! Lesion placement and ground truth: hemorrhages, red small dots, soft and hard exudates, each
//! drawn into its coverage plane and marked in its ground-truth map in the same pass (see
//! `shapes::draw_blob`), with a core, margin and optional halo as several experts would mark it.

use std::f32::consts::TAU;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::pick;
use super::shapes::{draw_blob, Blob, Edge, Fov, Marking, Plane};

/// The lesions of one image: what is drawn (coverage planes) and what is marked.
pub(super) struct Lesions {
    /// Ground-truth maps in `Lesion::ALL` order.
    pub(super) truth: [Vec<u8>; 4],
    /// Hemorrhages and red small dots.
    pub(super) red: Plane,
    /// Hard exudates.
    pub(super) hard: Plane,
    /// Soft exudates.
    pub(super) soft: Plane,
}

/// A random point inside the field of view (within 0.88 R), away from the disc and from the
/// `avoid` circles; `None` after too many tries.
fn place(
    rng: &mut ChaCha8Rng,
    fov: &Fov,
    disc: (f32, f32, f32),
    margin: f32,
    avoid: &[(f32, f32, f32)],
) -> Option<(f32, f32)> {
    for _ in 0..60 {
        let rho = fov.r * 0.88 * rng.random::<f32>().sqrt();
        let ang = rng.random_range(0.0..TAU);
        let (x, y) = (fov.cx + rho * ang.cos(), fov.cy + rho * ang.sin());
        let far = |c: &(f32, f32, f32)| (x - c.0).hypot(y - c.1) > c.2 + margin;
        if far(&(disc.0, disc.1, 1.8 * disc.2)) && avoid.iter().all(far) {
            return Some((x, y));
        }
    }
    None
}

/// Places and draws every lesion of a `w` x `h` image whose optic disc has centre `disc` and
/// radius `disc_r`.
pub(super) fn draw_lesions(
    rng: &mut ChaCha8Rng,
    fov: &Fov,
    w: usize,
    h: usize,
    disc: (f32, f32),
    disc_r: f32,
) -> Lesions {
    let r = fov.r;

    let mut truth: [Vec<u8>; 4] = std::array::from_fn(|_| vec![0u8; w * h]);
    let [gt_hem, gt_hard, gt_soft, gt_dots] = &mut truth;
    let mut red = Plane::new(w, h);
    let mut hard = Plane::new(w, h);
    let mut soft = Plane::new(w, h);
    let disc3 = (disc.0, disc.1, disc_r);
    let min_px = 1.5f32;

    // Hemorrhages: none in ~10% of images, otherwise 1..12, skewed to few; some in clusters.
    let mut taken: Vec<(f32, f32, f32)> = Vec::new();
    let n_hem = if rng.random::<f32>() < 0.1 {
        0
    } else {
        1 + (rng.random::<f32>().powf(1.5) * 15.0) as usize
    };
    for _ in 0..n_hem {
        let a = (r * (rng.random_range(0.014f32.ln()..0.085f32.ln())).exp()).max(min_px);
        let b = (a * rng.random_range(0.45..1.0)).max(min_px);
        let near = taken.last().copied().filter(|_| rng.random::<f32>() < 0.3);
        let c = match near {
            Some(p) => {
                let ang = rng.random_range(0.0..TAU);
                let d = p.2 + a * rng.random_range(0.3..1.2);
                (p.0 + d * ang.cos(), p.1 + d * ang.sin())
            }
            None => match place(rng, fov, disc3, a, &[]) {
                Some(c) => c,
                None => continue,
            },
        };
        if fov.d2(c.0, c.1) > (0.92 * r).powi(2) {
            continue;
        }
        let blob = Blob::random(rng, c, a, b, 0.18);
        let core = pick(rng, &[252u8, 252, 252, 210, 210, 231, 168]);
        let mark = Marking {
            levels: vec![
                (0.92, core),
                (rng.random_range(1.1..1.35), pick(rng, &[84u8, 105, 126])),
            ],
            halo: (rng.random::<f32>() < 0.5).then(|| {
                (
                    blob.rmax() * rng.random_range(1.4..1.9),
                    pick(rng, &[42u8, 63]),
                )
            }),
        };
        let strength = rng.random_range(0.8..0.97);
        let edge = Edge::Sharp(rng.random_range(0.1..0.3));
        draw_blob(&mut red, gt_hem, &blob, strength, edge, &mark);
        taken.push((c.0, c.1, blob.rmax()));
    }

    // Red small dots (microaneurysms).
    for _ in 0..rng.random_range(0..9) {
        let a = (r * rng.random_range(0.004..0.009)).max(1.0);
        let Some(c) = place(rng, fov, disc3, a, &[]) else {
            continue;
        };
        let b = a * rng.random_range(0.8..1.0);
        let blob = Blob::random(rng, c, a, b, 0.05);
        let mark = Marking {
            levels: vec![(1.3, pick(rng, &[252u8, 210, 168]))],
            halo: (rng.random::<f32>() < 0.5).then_some((a * 2.6, 63)),
        };
        draw_blob(&mut red, gt_dots, &blob, 0.85, Edge::Sharp(0.2), &mark);
    }

    // Soft exudates (cotton-wool spots): few, large, fuzzy, pale.
    for _ in 0..pick(rng, &[0usize, 0, 1, 1, 2]) {
        let a = (r * rng.random_range(0.025..0.055)).max(min_px);
        let Some(c) = place(rng, fov, disc3, 1.5 * a, &taken) else {
            continue;
        };
        let b = a * rng.random_range(0.55..1.0);
        let blob = Blob::random(rng, c, a, b, 0.2);
        let mark = Marking {
            levels: vec![(0.8, pick(rng, &[252u8, 210, 168])), (1.3, 84)],
            halo: None,
        };
        draw_blob(
            &mut soft,
            gt_soft,
            &blob,
            rng.random_range(0.55..0.8),
            Edge::Fuzzy,
            &mark,
        );
        taken.push((c.0, c.1, blob.rmax() * 1.3));
    }

    // Hard exudates: clusters of small sharp bright yellow spots.
    for _ in 0..pick(rng, &[0usize, 0, 1, 1, 2, 3, 4]) {
        let cr = r * rng.random_range(0.05..0.14);
        let Some(c) = place(rng, fov, disc3, cr, &taken) else {
            continue;
        };
        let halo = (rng.random::<f32>() < 0.7).then(|| pick(rng, &[42u8, 63, 84]));
        if let Some(v) = halo {
            // The whole cluster circled by some experts.
            let ring = Blob::random(rng, c, cr * 1.25, cr * 1.25, 0.0);
            let mark = Marking {
                levels: vec![(1.0, v)],
                halo: None,
            };
            draw_blob(&mut hard, gt_hard, &ring, 0.0, Edge::Sharp(0.1), &mark);
        }
        for _ in 0..rng.random_range(4..20) {
            let a = (r * rng.random_range(0.003..0.012)).max(1.0);
            let ang = rng.random_range(0.0..TAU);
            let d = cr * rng.random::<f32>().sqrt();
            let p = (c.0 + d * ang.cos(), c.1 + d * ang.sin());
            let b = a * rng.random_range(0.5..1.0);
            let blob = Blob::random(rng, p, a, b, 0.25);
            let mark = Marking {
                levels: vec![(1.15, pick(rng, &[252u8, 231, 210]))],
                halo: None,
            };
            let strength = rng.random_range(0.75..0.97);
            draw_blob(
                &mut hard,
                gt_hard,
                &blob,
                strength,
                Edge::Sharp(0.12),
                &mark,
            );
        }
        taken.push((c.0, c.1, cr * 1.25));
    }

    Lesions {
        truth,
        red,
        hard,
        soft,
    }
}
