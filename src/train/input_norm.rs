//! The network's input normalization (`train.input_norm`), one function for every place a batch
//! enters the network (training, validation, previews, evaluation, inference).

use tch::{Kind, Tensor};

use crate::recipe_config::InputNorm;

/// x [N, 3, H, W] on the [0, 1] scale -> (x - mean_c) / std_c per channel; `None` returns x.
pub fn normalize(x: &Tensor, norm: Option<&InputNorm>) -> Tensor {
    match norm {
        None => x.shallow_clone(),
        Some(n) => {
            let dev = x.device();
            let mean = Tensor::from_slice(&n.mean.map(|v| v as f32))
                .view([1, 3, 1, 1])
                .to_device(dev);
            let std = Tensor::from_slice(&n.std.map(|v| v as f32))
                .view([1, 3, 1, 1])
                .to_device(dev);
            ((x.to_kind(Kind::Float) - mean) / std).to_kind(x.kind())
        }
    }
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
        };
        let y = Vec::<f32>::try_from(normalize(&x, Some(&n)).flatten(0, -1)).unwrap();
        for (a, b) in y.iter().zip([1.0f32, 2.0, 5.0]) {
            assert!((a - b).abs() < 1e-5, "{y:?}");
        }
        let same = Vec::<f32>::try_from(normalize(&x, None).flatten(0, -1)).unwrap();
        assert_eq!(same, [0.5, 0.2, 0.1]);
    }
}
