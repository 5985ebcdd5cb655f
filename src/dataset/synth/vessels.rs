//! The vessel tree: arcades, nasal and macular vessels grown from the optic disc as tapering,
//! randomly branching walks, drawn into a coverage plane. Drawn only; vessels have no ground truth.

use std::f32::consts::PI;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::pick;
use super::shapes::{Fov, Plane};

/// A vessel segment growing step by step. Angles are in the eye's frame, where +x points from the
/// disc towards the macula (temporal); `side` mirrors that frame onto the screen.
struct Walker {
    x: f32,
    y: f32,
    theta: f32,
    target: f32,
    relax: f32,
    radius: f32,
    /// Radius factor per step.
    shrink: f32,
    left: f32,
    depth: u8,
    strength: f32,
}

/// Grows the vessel tree from the disc into `plane`.
pub(super) fn grow_vessels(
    rng: &mut ChaCha8Rng,
    plane: &mut Plane,
    fov: &Fov,
    disc: (f32, f32),
    side: f32,
) {
    let r = fov.r;
    let ds = (0.01 * r).max(1.0);
    let walker = |rng: &mut ChaCha8Rng,
                  theta: f32,
                  target: f32,
                  relax: f32,
                  radius: f32,
                  len: f32,
                  strength: f32| {
        let off = 0.02 * r;
        Walker {
            x: disc.0 + rng.random_range(-off..off),
            y: disc.1 + rng.random_range(-off..off),
            theta,
            target,
            relax,
            radius,
            shrink: 0.3f32.powf(ds / len),
            left: len,
            depth: 0,
            strength,
        }
    };
    let mut stack = Vec::new();
    // Temporal arcades (upper and lower; a vein and an artery each), bending around the macula.
    for vert in [-1.0f32, 1.0] {
        for (radius, strength, start) in [(0.014, 0.85, 1.45), (0.0105, 0.65, 1.3)] {
            let theta = vert * (start + rng.random_range(-0.12..0.12));
            let target = vert * rng.random_range(-0.05..0.3);
            let len = r * rng.random_range(1.4..1.9);
            stack.push(walker(rng, theta, target, 0.022, radius * r, len, strength));
        }
    }
    // Nasal vessels.
    for _ in 0..rng.random_range(2..5) {
        let vert: f32 = if rng.random::<bool>() { 1.0 } else { -1.0 };
        let theta = PI + vert * rng.random_range(0.25..1.2);
        let radius = r * rng.random_range(0.005..0.009);
        let len = r * rng.random_range(0.7..1.1);
        stack.push(walker(
            rng,
            theta,
            theta + vert * 0.3,
            0.01,
            radius,
            len,
            0.72,
        ));
    }
    // Small vessels towards the macula.
    for _ in 0..rng.random_range(1..4) {
        let theta = rng.random_range(-0.4..0.4);
        let radius = r * rng.random_range(0.003..0.0045);
        let len = r * rng.random_range(0.2..0.4);
        stack.push(walker(rng, theta, theta, 0.01, radius, len, 0.6));
    }

    let limit2 = (0.985 * r).powi(2);
    while let Some(mut w) = stack.pop() {
        while w.left > 0.0 && w.radius >= 0.2 {
            w.target += rng.random_range(-0.02..0.02);
            w.theta += w.relax * (w.target - w.theta) + rng.random_range(-0.08..0.08);
            let nx = w.x + ds * side * w.theta.cos();
            let ny = w.y + ds * w.theta.sin();
            if fov.d2(nx, ny) > limit2 {
                break;
            }
            let nr = w.radius * w.shrink;
            plane.capsule((w.x, w.y), (nx, ny), w.radius, nr, w.strength);
            (w.x, w.y, w.radius) = (nx, ny, nr);
            w.left -= ds;
            let every = if w.depth == 0 { 0.25 } else { 0.4 } * r;
            if w.depth < 2 && w.left > 0.1 * r && rng.random::<f32>() < ds / every {
                let turn = pick(rng, &[-1.0f32, 1.0]) * rng.random_range(0.45..1.0);
                let theta = w.theta + turn;
                let len = (w.left * rng.random_range(0.5..0.95)).max(0.15 * r);
                stack.push(Walker {
                    x: w.x,
                    y: w.y,
                    theta,
                    target: theta + rng.random_range(-0.3..0.3),
                    relax: 0.02,
                    radius: w.radius * rng.random_range(0.5..0.75),
                    shrink: 0.3f32.powf(ds / len),
                    left: len,
                    depth: w.depth + 1,
                    strength: w.strength * rng.random_range(0.85..1.0),
                });
                w.radius *= 0.92;
            }
        }
    }
}
