//! The run configuration: one JSON file (see `generator-configs/`) drives every stage.
//!
//! Every struct has defaults (an empty `{}` is the default hemorrhage preset) and rejects unknown
//! keys, so a typo is an error instead of a silently ignored setting. [`Config::load`] parses and
//! validates up front, with messages that name the file and the field.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::recipe_config::EvaluateConfig;
use crate::train_config::{InferConfig, ModelConfig, TrainConfig};

/// The whole run: where data comes from, what is generated, how it is split, and how the model is trained.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Run name: outputs go to `<out>/<name>/`.
    pub name: String,
    /// Global seed for every random draw (augmentation, split, sampling, training).
    pub seed: u64,
    /// The `diaretdb1_v_1_1` folder (the one holding `resources/`). Relative paths are taken from
    /// the current directory.
    pub data: PathBuf,
    /// Output root.
    pub out: PathBuf,
    /// Lesion type: the ground-truth folder under `resources/images/ddb1_groundtruth/`.
    pub lesion: Lesion,
    /// Preparation and variants (`pipeline generate`).
    pub generate: GenerateConfig,
    /// Train / valid / test assignment (`pipeline split`).
    pub split: SplitConfig,
    /// Statistics and sample sheets (`pipeline stats`).
    pub stats: StatsConfig,
    /// The network (`train`, `evaluate`, `infer`).
    pub model: ModelConfig,
    /// The training loop (`pipeline train`).
    pub train: TrainConfig,
    /// Inference on new photographs (`pipeline infer`).
    pub infer: InferConfig,
    /// Largest accepted input image, width x height in pixels (larger files are refused with
    /// their size and this limit). Written to the canonical config only when changed.
    #[serde(skip_serializing_if = "is_default_max_pixels")]
    pub max_image_pixels: u64,
    /// Scoring of a trained model (`pipeline evaluate`).
    pub evaluate: EvaluateConfig,
}

fn is_default_max_pixels(n: &u64) -> bool {
    *n == crate::input::DEFAULT_MAX_PIXELS
}

/// Longest accepted variant name (`rotate_<angle>` etc.): file names stay short and readable.
pub const MAX_VARIANT_NAME: usize = 32;

/// Largest accepted `generate.size`: one 4096 x 4096 RGB image is 48 MiB, and every
/// deterministic variant keeps a precomputed map of about 12 bytes per pixel.
pub const MAX_SIZE: u32 = 4096;

/// Largest accepted gaussian sigma (pixels) of the elastic and distortion fields: the blur pads
/// every line by 4 sigma, so a huge sigma would exhaust memory; far beyond this the field is flat.
pub const MAX_SIGMA: f64 = 10_000.0;

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "hemorrhages".into(),
            seed: 42,
            data: PathBuf::from("diaretdb1_v_1_1"),
            out: PathBuf::from("out"),
            lesion: Lesion::Hemorrhages,
            generate: GenerateConfig::default(),
            split: SplitConfig::default(),
            stats: StatsConfig::default(),
            model: ModelConfig::default(),
            train: TrainConfig::default(),
            infer: InferConfig::default(),
            max_image_pixels: crate::input::DEFAULT_MAX_PIXELS,
            evaluate: EvaluateConfig::default(),
        }
    }
}

/// The four DIARETDB1 ground-truth kinds (default: hemorrhages, as the config's).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Lesion {
    /// Haemorrhages (`hemorrhages`, the default).
    #[default]
    Hemorrhages,
    /// Hard exudates (`hardexudates`).
    Hardexudates,
    /// Soft exudates (`softexudates`).
    Softexudates,
    /// Red small dots, i.e. microaneurysms (`redsmalldots`).
    Redsmalldots,
}

impl Lesion {
    /// Every kind, in DIARETDB1's folder order.
    pub const ALL: [Lesion; 4] = [
        Lesion::Hemorrhages,
        Lesion::Hardexudates,
        Lesion::Softexudates,
        Lesion::Redsmalldots,
    ];

    /// The folder name under `ddb1_groundtruth/`.
    pub fn folder(self) -> &'static str {
        match self {
            Lesion::Hemorrhages => "hemorrhages",
            Lesion::Hardexudates => "hardexudates",
            Lesion::Softexudates => "softexudates",
            Lesion::Redsmalldots => "redsmalldots",
        }
    }
}

/// Output image encoding.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// Lossless RGB PNG (`png`, the default).
    Png,
    /// RGB JPEG (`jpeg`) at `generate.jpeg_quality`.
    Jpeg,
}

/// PNG row filter of the generated images (PNG specification, section 9: the five filter
/// types; masks always use `adaptive`). Lossless whatever the filter: the pixels are the same,
/// only the file bytes and size differ.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PngFilter {
    /// Each row gets the filter of the five with the smallest sum of absolute values (the png
    /// crate's heuristic; the bytes of earlier versions, which had no choice).
    #[default]
    Adaptive,
    /// No filter.
    None,
    /// Difference to the pixel on the left.
    Sub,
    /// Difference to the pixel above.
    Up,
    /// Difference to the mean of left and above: on DIARETDB1 images ~1% larger files than
    /// `adaptive` and a third less encoding time (docs/benchmarks.md).
    Avg,
    /// Difference to the Paeth predictor of left, above and upper left.
    Paeth,
}

impl PngFilter {
    /// True for the default, which configs and manifests leave out (so the generation key of a
    /// config written before this setting existed stays the same).
    pub fn is_adaptive(&self) -> bool {
        *self == PngFilter::Adaptive
    }
}

/// Chroma subsampling of the generated JPEG images (JPEG / JFIF sampling factors of Cb and Cr
/// against Y).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum JpegSubsampling {
    /// 4:4:4 from `jpeg_quality` 90 up, 4:2:0 below (the rule of earlier versions).
    #[default]
    #[serde(rename = "auto")]
    Auto,
    /// Full-resolution chroma.
    #[serde(rename = "4:4:4")]
    Full,
    /// Chroma halved in both directions: what OpenCV and PIL write by default, and what the
    /// comparison's Python tools write.
    #[serde(rename = "4:2:0")]
    Half,
}

impl JpegSubsampling {
    /// True for the default, which configs and manifests leave out (so the generation key of a
    /// config written before this setting existed stays the same).
    pub fn is_auto(&self) -> bool {
        *self == JpegSubsampling::Auto
    }

    /// Whether chroma is kept at full resolution at `quality`.
    pub fn full_chroma(self, quality: u8) -> bool {
        match self {
            JpegSubsampling::Auto => quality >= 90,
            JpegSubsampling::Full => true,
            JpegSubsampling::Half => false,
        }
    }
}

/// Generation: preparation of each source and the variants written for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GenerateConfig {
    /// Output side in pixels (images are squared, then resized to size x size).
    pub size: u32,
    /// Confidence threshold in 0..=1: a pixel is lesion when its ground-truth value v > 0 and
    /// v / 252 >= threshold. 0.75 is the DIARETDB1 protocol; 0 means "any mark" (the reference).
    pub threshold: f64,
    /// Image file format; masks are always 1-channel PNG.
    pub image_format: ImageFormat,
    /// JPEG quality (1..=100) when `image_format` is `jpeg`.
    pub jpeg_quality: u8,
    /// Chroma subsampling of the JPEG images.
    #[serde(skip_serializing_if = "JpegSubsampling::is_auto")]
    pub jpeg_subsampling: JpegSubsampling,
    /// Row filter of the PNG images (masks always use `adaptive`).
    #[serde(skip_serializing_if = "PngFilter::is_adaptive")]
    pub png_filter: PngFilter,
    /// Apply the field-of-view mask (`ddb1_fundusmask/fmask.tif`) to the lesion mask when present.
    pub use_fov_mask: bool,
    /// Which variants are written for every source.
    pub variants: VariantsConfig,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        Self {
            size: 512,
            threshold: 0.75,
            image_format: ImageFormat::Png,
            jpeg_quality: 95,
            jpeg_subsampling: JpegSubsampling::Auto,
            png_filter: PngFilter::Adaptive,
            use_fov_mask: true,
            variants: VariantsConfig::default(),
        }
    }
}

/// Which variants to write. `orig` is always written. An empty list switches a kind off.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VariantsConfig {
    /// Write the left-right mirror `hflip` (default true).
    pub hflip: bool,
    /// Write the top-bottom mirror `vflip` (default true).
    pub vflip: bool,
    /// Rotation angles in degrees; positive turns the picture counter-clockwise on screen.
    pub rotate: Vec<f64>,
    /// Scale factors in (0, 1] about the centre, pasted on the fill colour.
    pub shrink: Vec<f64>,
    /// Horizontal shear factors: x' = x + s (y - H/2).
    pub shear_x: Vec<f64>,
    /// Vertical shear factors: y' = y + s (x - W/2).
    pub shear_y: Vec<f64>,
    /// Elastic deformations (Simard 2003).
    pub elastic: Vec<ElasticParams>,
    /// Gaussian-field distortions: maximum displacement as a fraction of `size`.
    pub distort: Vec<f64>,
    /// Gaussian sigma (pixels) of the distortion field.
    pub distort_sigma: f64,
    /// Barrel and pincushion warps.
    pub lens: LensConfig,
}

impl Default for VariantsConfig {
    fn default() -> Self {
        Self {
            hflip: true,
            vflip: true,
            rotate: (1..=17).map(|i| f64::from(i * 20)).collect(),
            shrink: vec![0.8],
            shear_x: vec![0.1],
            shear_y: vec![0.1],
            elastic: vec![ElasticParams::default()],
            distort: vec![0.02, 0.03],
            distort_sigma: 40.0,
            lens: LensConfig::default(),
        }
    }
}

/// One elastic deformation: displacement = alpha * (gaussian_sigma * U(-1, 1) noise).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ElasticParams {
    /// Displacement scale in pixels, >= 0 (default 1300).
    pub alpha: f64,
    /// Gaussian sigma in pixels, in (0, [`MAX_SIGMA`]] (default 8).
    pub sigma: f64,
}

impl Default for ElasticParams {
    fn default() -> Self {
        Self {
            alpha: 1300.0,
            sigma: 8.0,
        }
    }
}

/// Barrel / pincushion warps around a list of centres.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LensConfig {
    /// Write `barrel_<k>` variants (amount +`amount`).
    pub barrel: bool,
    /// Write `pincushion_<k>` variants (amount -`amount`).
    pub pincushion: bool,
    /// Strength, > 0.
    pub amount: f64,
    /// Radius of the warped disc as a fraction of the width.
    pub radius: f64,
    /// Centres as fractions (x of width, y of height); one output per centre.
    pub centres: Vec<[f64; 2]>,
    /// Reference behaviour: output k applies the warps of centres 1..=k in turn.
    pub chained: bool,
}

impl Default for LensConfig {
    fn default() -> Self {
        Self {
            barrel: true,
            pincushion: true,
            amount: 0.3,
            radius: 0.3,
            centres: vec![[0.3, 0.3], [0.7, 0.3], [0.5, 0.5], [0.3, 0.7], [0.7, 0.7]],
            chained: false,
        }
    }
}

/// How the master set is divided into train / valid / test.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SplitMode {
    /// Ratios over source images (no source in two splits). The default.
    BySource,
    /// DIARETDB1's own train/test lists; valid carved from the training list.
    Official,
    /// Ratios over individual files: the reference's leaky behaviour, for comparison only.
    ByFile,
}

impl std::fmt::Display for SplitMode {
    /// The mode as users write it in the config (`by-source`, `official`, `by-file`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SplitMode::BySource => "by-source",
            SplitMode::Official => "official",
            SplitMode::ByFile => "by-file",
        })
    }
}

/// How the sources are assigned to train / valid / test. The three ratios are each within 0..=1,
/// sum to 1 (within 1e-6), and `train` is > 0.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SplitConfig {
    /// What is divided: sources, DIARETDB1's lists, or files (default `by-source`).
    pub mode: SplitMode,
    /// Share of sources (files in `by-file`) for training (default 0.8). In `official` mode only
    /// `valid / (train + valid)` matters: the share of the training list moved to valid.
    pub train: f64,
    /// Share for validation (default 0.15).
    pub valid: f64,
    /// Share for testing (default 0.05); ignored in `official` mode (DIARETDB1's test list).
    pub test: f64,
    /// Test holds only the `orig` variant of its sources (by-source and official modes).
    pub test_originals_only: bool,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            mode: SplitMode::BySource,
            train: 0.8,
            valid: 0.15,
            test: 0.05,
            test_originals_only: true,
        }
    }
}

/// Settings of `pipeline stats`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StatsConfig {
    /// Pairs shown per split in `samples_<split>.png`.
    pub samples_per_split: usize,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self {
            samples_per_split: 12,
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file. Errors name the file and the field.
    pub fn load(path: &Path) -> Result<Config> {
        let text = crate::io::read_regular_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        // A byte-order mark (some Windows editors write one) is not part of the JSON.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let config = Config::from_json(text)
            .with_context(|| format!("invalid config file {}", path.display()))?;
        config
            .validate()
            .with_context(|| format!("invalid config file {}", path.display()))?;
        Ok(config)
    }

    /// Parses config JSON; a type or key error names the field's path (e.g. `generate.size`).
    pub fn from_json(text: &str) -> Result<Config> {
        // serde also accepts a struct written as an array of its values (`[...]` for `{...}`);
        // a config is objects all the way down, so that form is refused, naming the key.
        let value = serde_json::from_str::<serde_json::Value>(text).ok();
        if let Some(value) = &value {
            let mut shape = serde_json::to_value(Config::default()).expect("config serializes");
            // `model` serializes only the knobs its `arch` reads; the shape needs them all.
            shape["model"] = crate::train_config::ModelConfig::all_keys();
            objects_where_expected(value, &shape, "")?;
        }
        let de = &mut serde_json::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            // A syntax error after a key (a trailing comma, say) ends the path in `?`: the
            // object it is in is what can be named.
            let path = path.trim_end_matches('?').trim_end_matches('.');
            if path.is_empty() {
                anyhow::anyhow!("{inner}")
            } else {
                anyhow::anyhow!("`{path}`: {inner}")
            }
        })?;
        // Anything after the config object (a second object pasted in, a stray brace, a
        // comment) would otherwise be ignored without a word.
        de.end().map_err(|e| {
            anyhow::anyhow!("{e}: a config file holds one JSON object and nothing after it")
        })?;
        // A knob of an architecture that is not selected, present even at its defaults.
        if let Some(model) = value.as_ref().and_then(|v| v.get("model")) {
            crate::train_config::check_model_keys(model)?;
        }
        Ok(config)
    }

    /// Checks every value range; the message names the field.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty()
            || self.name.contains(['/', '\\'])
            || self.name == "."
            || self.name == ".."
        {
            bail!("`name` must be a plain folder name, got {:?}", self.name);
        }
        if self.name.contains('\0') || self.name.len() > 200 {
            bail!(
                "`name` must be a plain folder name of at most 200 bytes without NUL, got {:?}",
                self.name
            );
        }
        if self.max_image_pixels == 0 {
            bail!("`max_image_pixels` must be > 0");
        }
        let g = &self.generate;
        if g.size < 8 || g.size > MAX_SIZE {
            bail!(
                "`generate.size` must be within 8..={MAX_SIZE}, got {}",
                g.size
            );
        }
        if !(g.threshold.is_finite() && (0.0..=1.0).contains(&g.threshold)) {
            bail!(
                "`generate.threshold` must be within 0..=1, got {}",
                g.threshold
            );
        }
        if !(1..=100).contains(&g.jpeg_quality) {
            bail!(
                "`generate.jpeg_quality` must be within 1..=100, got {}",
                g.jpeg_quality
            );
        }
        let v = &g.variants;
        for (i, a) in v.rotate.iter().enumerate() {
            finite(&format!("generate.variants.rotate[{i}]"), *a)?;
            if a.abs() > MAX_ROTATE {
                bail!(
                    "`generate.variants.rotate[{i}]` must be within -{MAX_ROTATE}..={MAX_ROTATE} \
                     degrees, got {a}"
                );
            }
        }
        no_duplicates("generate.variants.rotate", &v.rotate)?;
        // Angles equal modulo 360 make the same pairs; a multiple of 360 copies `orig`.
        for (i, a) in v.rotate.iter().enumerate() {
            let turn = a.rem_euclid(360.0);
            if turn == 0.0 {
                bail!(
                    "`generate.variants.rotate[{i}]` is {a} degrees, a whole turn: it would copy \
                     `orig`; remove it"
                );
            }
            if let Some(j) = v.rotate[..i]
                .iter()
                .position(|b| b.rem_euclid(360.0) == turn)
            {
                bail!(
                    "`generate.variants.rotate[{i}]` ({a} degrees) is the same rotation as \
                     `generate.variants.rotate[{j}]` ({} degrees); each angle may appear once",
                    v.rotate[j]
                );
            }
        }
        // Values that leave the image unchanged would write copies of `orig` under other names.
        for (field, list, identity) in [
            ("shrink", &v.shrink, 1.0),
            ("shear_x", &v.shear_x, 0.0),
            ("shear_y", &v.shear_y, 0.0),
            ("distort", &v.distort, 0.0),
        ] {
            if let Some(i) = list.iter().position(|x| *x == identity) {
                bail!(
                    "`generate.variants.{field}[{i}]` is {identity}, which leaves the image \
                     unchanged (a copy of `orig`); remove it"
                );
            }
        }
        if let Some(i) = v.elastic.iter().position(|e| e.alpha == 0.0) {
            bail!(
                "`generate.variants.elastic[{i}].alpha` is 0, which leaves the image unchanged \
                 (a copy of `orig`); remove it"
            );
        }
        no_duplicates("generate.variants.shrink", &v.shrink)?;
        no_duplicates("generate.variants.shear_x", &v.shear_x)?;
        no_duplicates("generate.variants.shear_y", &v.shear_y)?;
        no_duplicates("generate.variants.distort", &v.distort)?;
        no_duplicates("generate.variants.elastic", &v.elastic)?;
        no_duplicates("generate.variants.lens.centres", &v.lens.centres)?;
        for (i, r) in v.shrink.iter().enumerate() {
            finite(&format!("generate.variants.shrink[{i}]"), *r)?;
            if *r <= 0.0 || *r > 1.0 {
                bail!("`generate.variants.shrink[{i}]` must be in (0, 1], got {r}");
            }
        }
        for (field, list) in [("shear_x", &v.shear_x), ("shear_y", &v.shear_y)] {
            for (i, s) in list.iter().enumerate() {
                finite(&format!("generate.variants.{field}[{i}]"), *s)?;
                if s.abs() > 2.0 {
                    bail!("`generate.variants.{field}[{i}]` must be within -2..=2, got {s}");
                }
            }
        }
        for (i, e) in v.elastic.iter().enumerate() {
            finite(&format!("generate.variants.elastic[{i}].alpha"), e.alpha)?;
            finite(&format!("generate.variants.elastic[{i}].sigma"), e.sigma)?;
            if e.alpha < 0.0 || e.alpha > MAX_ALPHA {
                bail!(
                    "`generate.variants.elastic[{i}].alpha` must be >= 0 and at most \
                     {MAX_ALPHA} pixels, got {}",
                    e.alpha
                );
            }
            if e.sigma <= 0.0 || e.sigma > MAX_SIGMA {
                bail!(
                    "`generate.variants.elastic[{i}].sigma` must be in (0, {MAX_SIGMA}] pixels, \
                     got {}",
                    e.sigma
                );
            }
        }
        for (i, d) in v.distort.iter().enumerate() {
            finite(&format!("generate.variants.distort[{i}]"), *d)?;
            if !(0.0..=0.5).contains(d) {
                bail!("`generate.variants.distort[{i}]` must be within 0..=0.5, got {d}");
            }
        }
        finite("generate.variants.distort_sigma", v.distort_sigma)?;
        if v.distort_sigma <= 0.0 || v.distort_sigma > MAX_SIGMA {
            bail!(
                "`generate.variants.distort_sigma` must be in (0, {MAX_SIGMA}] pixels, got {}",
                v.distort_sigma
            );
        }
        check_variant_names(v)?;
        let l = &v.lens;
        finite("generate.variants.lens.amount", l.amount)?;
        finite("generate.variants.lens.radius", l.radius)?;
        let lens_on = l.barrel || l.pincushion;
        if l.amount < 0.0 || l.amount > 2.0 || (lens_on && l.amount == 0.0) {
            bail!(
                "`generate.variants.lens.amount` must be in (0, 2] (0 would copy the original), \
                 got {}",
                l.amount
            );
        }
        if l.radius <= 0.0 || l.radius > 1.0 {
            bail!(
                "`generate.variants.lens.radius` must be in (0, 1], got {}",
                l.radius
            );
        }
        if (l.barrel || l.pincushion) && l.centres.is_empty() {
            bail!("`generate.variants.lens.centres` must not be empty when barrel or pincushion is on");
        }
        let (lo, hi) = LENS_CENTRE_RANGE;
        for (i, c) in l.centres.iter().enumerate() {
            for x in c {
                finite(&format!("generate.variants.lens.centres[{i}]"), *x)?;
                if !(lo..=hi).contains(x) {
                    bail!(
                        "`generate.variants.lens.centres[{i}]` must be within {lo}..={hi} (fractions \
                         of the width and height), got [{}, {}]",
                        c[0],
                        c[1]
                    );
                }
            }
            // The warped disc must reach into the image, or the variant is a copy of `orig`.
            let dx = (c[0] - c[0].clamp(0.0, 1.0)).abs();
            let dy = (c[1] - c[1].clamp(0.0, 1.0)).abs();
            if (dx * dx + dy * dy).sqrt() >= l.radius {
                bail!(
                    "`generate.variants.lens.centres[{i}]` [{}, {}] is so far outside the image \
                     that its disc (`lens.radius` {}) misses it: the variant would be a copy of \
                     the original",
                    c[0],
                    c[1],
                    l.radius
                );
            }
        }
        let s = &self.split;
        finite("split.train", s.train)?;
        if s.train <= 0.0 {
            bail!(
                "`split.train` must be > 0 (training needs sources), got {}",
                s.train
            );
        }
        for (field, r) in [
            ("split.train", s.train),
            ("split.valid", s.valid),
            ("split.test", s.test),
        ] {
            finite(field, r)?;
            if !(0.0..=1.0).contains(&r) {
                bail!("`{field}` must be within 0..=1, got {r}");
            }
        }
        let sum = s.train + s.valid + s.test;
        if (sum - 1.0).abs() > 1e-6 {
            bail!(
                "`split.train` + `split.valid` + `split.test` must sum to 1, got {} + {} + {} = {sum:.6}",
                s.train,
                s.valid,
                s.test
            );
        }
        crate::train_config::validate(&self.model, &self.train, &self.infer)?;
        crate::recipe_config::validate_evaluate(&self.evaluate)?;
        if let Some(p) = self.train.patch_size {
            if p > self.generate.size {
                bail!(
                    "`train.patch_size` ({p}) must be <= `generate.size` ({})",
                    self.generate.size
                );
            }
        }
        Ok(())
    }

    /// `<out>/<name>`: where this run's outputs go.
    pub fn run_dir(&self) -> PathBuf {
        self.out.join(&self.name)
    }

    /// The paths of this run's folder ([`Self::run_dir`]).
    pub fn layout(&self) -> crate::run_layout::RunLayout {
        crate::run_layout::RunLayout::new(self.run_dir())
    }

    /// The config as canonical JSON (stable key order), and its blake3 hash (hex).
    pub fn canonical(&self) -> (String, String) {
        let text = serde_json::to_string(self).expect("config serializes");
        let hash = blake3::hash(text.as_bytes()).to_hex().to_string();
        (text, hash)
    }

    /// The part of the config that decides the generated master set; its hash identifies a run's
    /// master files (a different hash in an existing output folder means a different run).
    pub fn generation_key(&self) -> String {
        self.generation_settings().hash()
    }

    /// The settings whose hash is [`generation_key`](Self::generation_key) (seed, lesion,
    /// `generate`, the JPEG encoder of JPEG output), e.g. to name the first one that differs
    /// from a run's record.
    pub fn generation_settings(&self) -> crate::manifest::GenerationKey<'_> {
        crate::manifest::GenerationKey {
            seed: self.seed,
            lesion: self.lesion,
            generate: &self.generate,
            jpeg_encoder: (self.generate.image_format == ImageFormat::Jpeg)
                .then_some(crate::io::JPEG_ENCODER),
        }
    }
}

/// Refuses an array (or any non-object) in `value` where the default config `shape` has an
/// object (a struct), recursively; `path` is the key path so far (empty at the top).
fn objects_where_expected(
    value: &serde_json::Value,
    shape: &serde_json::Value,
    path: &str,
) -> Result<()> {
    use serde_json::Value;
    let kind = |v: &Value| match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    match (shape, value) {
        (Value::Object(_), Value::Object(_)) | (_, Value::Null) => {}
        (Value::Object(_), other) => {
            if path.is_empty() {
                bail!(
                    "the config must be a JSON object ({{\"name\": ..., ...}}), got {}",
                    kind(other)
                );
            }
            bail!(
                "`{path}` must be a JSON object ({{...}} with named keys), got {}",
                kind(other)
            );
        }
        _ => {}
    }
    match (shape, value) {
        (Value::Object(s), Value::Object(v)) => {
            for (k, sub) in v {
                if let Some(shape) = s.get(k) {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    objects_where_expected(sub, shape, &p)?;
                }
            }
        }
        (Value::Array(s), Value::Array(v)) => {
            if let Some(shape @ Value::Object(_)) = s.first() {
                for (i, sub) in v.iter().enumerate() {
                    objects_where_expected(sub, shape, &format!("{path}[{i}]"))?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Refuses a list whose entries repeat (they would give one variant, silently collapsed).
fn no_duplicates<T: PartialEq + Serialize>(field: &str, list: &[T]) -> Result<()> {
    for (i, x) in list.iter().enumerate() {
        if let Some(j) = list[..i].iter().position(|y| y == x) {
            // The value as the config writes it (JSON), e.g. 90.0 or {"alpha":1300.0,"sigma":40.0}.
            let v = serde_json::to_string(x).unwrap_or_default();
            bail!("`{field}[{i}]` repeats `{field}[{j}]` ({v}); each value may appear once");
        }
    }
    Ok(())
}

/// Largest accepted rotation angle magnitude, degrees.
pub const MAX_ROTATE: f64 = 360.0;

/// Largest accepted elastic `alpha` (pixels; the default is 1300).
pub const MAX_ALPHA: f64 = 100_000.0;

/// Lens centres must lie within this range (fractions of width / height).
pub const LENS_CENTRE_RANGE: (f64, f64) = (-0.5, 1.5);

/// Every variant name (which is part of file names, `<stem>_<variant>.png`) must be at most
/// [`MAX_VARIANT_NAME`] characters; the message names the field and shows the name.
fn check_variant_names(v: &VariantsConfig) -> Result<()> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for (field, kind, list) in [
        ("rotate", "rotate", &v.rotate),
        ("shrink", "shrink", &v.shrink),
        ("shear_x", "shear_x", &v.shear_x),
        ("shear_y", "shear_y", &v.shear_y),
        ("distort", "distort", &v.distort),
    ] {
        for (i, x) in list.iter().enumerate() {
            fields.push((
                format!("generate.variants.{field}[{i}]"),
                format!("{kind}_{x}"),
            ));
        }
    }
    for (i, e) in v.elastic.iter().enumerate() {
        fields.push((
            format!("generate.variants.elastic[{i}]"),
            format!("elastic_{}_{}", e.alpha, e.sigma),
        ));
    }
    for (field, name) in fields {
        if name.chars().count() > MAX_VARIANT_NAME {
            let shown: String = name.chars().take(MAX_VARIANT_NAME).collect();
            bail!(
                "`{field}` gives the variant name {shown}... ({} characters, the limit is \
                 {MAX_VARIANT_NAME}): use a value with fewer digits (names are part of the file \
                 names)",
                name.chars().count()
            );
        }
    }
    Ok(())
}

fn finite(field: &str, x: f64) -> Result<()> {
    if !x.is_finite() {
        bail!("`{field}` must be a finite number, got {x}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config> {
        let c = Config::from_json(text)?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn empty_object_is_the_default_preset() {
        let c = parse("{}").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.generate.variants.rotate.len(), 17);
    }

    /// The JPEG encoder is part of a JPEG run's key (another encoder makes other bytes), and PNG
    /// keys are the hash of seed, lesion and `generate` alone, as before it was recorded.
    #[test]
    fn jpeg_encoder_is_in_the_key_of_jpeg_runs_only() {
        let png = parse("{}").unwrap();
        let legacy = |c: &Config| {
            let settings = serde_json::json!({
                "seed": c.seed, "lesion": c.lesion, "generate": c.generate,
            });
            blake3::hash(serde_json::to_string(&settings).unwrap().as_bytes())
                .to_hex()
                .to_string()
        };
        assert_eq!(png.generation_key(), legacy(&png));
        let jpeg = parse(r#"{"generate": {"image_format": "jpeg"}}"#).unwrap();
        assert_eq!(
            jpeg.generation_settings().jpeg_encoder,
            Some(crate::io::JPEG_ENCODER)
        );
        assert_ne!(jpeg.generation_key(), legacy(&jpeg));
    }

    #[test]
    fn jpeg_subsampling_values() {
        for (text, full_at_95, full_at_80) in [
            ("auto", true, false),
            ("4:4:4", true, true),
            ("4:2:0", false, false),
        ] {
            let c = parse(&format!(
                r#"{{"generate": {{"jpeg_subsampling": "{text}"}}}}"#
            ))
            .unwrap();
            let s = c.generate.jpeg_subsampling;
            assert_eq!(
                (s.full_chroma(95), s.full_chroma(80)),
                (full_at_95, full_at_80)
            );
        }
        let err = parse(r#"{"generate": {"jpeg_subsampling": "4:2:2"}}"#).unwrap_err();
        assert!(
            format!("{err:#}").contains("generate.jpeg_subsampling"),
            "{err:#}"
        );
        // The default is left out of the key: configs written before the setting keep theirs.
        let auto = parse(r#"{"generate": {"jpeg_subsampling": "auto"}}"#).unwrap();
        assert_eq!(auto.generation_key(), parse("{}").unwrap().generation_key());
    }

    #[test]
    fn anything_after_the_config_object_is_refused() {
        for text in [
            "{\"seed\": 3}\n{\"seed\": 4}\n",
            "{\"seed\": 3}}",
            "{\"seed\": 3}\n// a comment\n",
            "{\"seed\": 3} trailing",
        ] {
            let err = format!("{:#}", parse(text).unwrap_err());
            assert!(
                err.contains("trailing characters") && err.contains("one JSON object"),
                "{text:?}: {err}"
            );
        }
        // Whitespace after it is fine.
        assert_eq!(parse("{\"seed\": 3}\n\n  ").unwrap().seed, 3);
        // A trailing comma names the object it is in, not `?`.
        let err = format!("{:#}", parse(r#"{"generate": {"size": 64,}}"#).unwrap_err());
        assert!(err.starts_with("`generate`: trailing comma"), "{err}");
        let err = format!("{:#}", parse(r#"{"seed": 3,}"#).unwrap_err());
        assert!(err.starts_with("trailing comma"), "{err}");
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_config() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cfg.json");
        std::fs::write(&p, "\u{feff}{\"seed\": 9}\n").unwrap();
        assert_eq!(Config::load(&p).unwrap().seed, 9);
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let err = parse(r#"{"generate": {"szie": 512}}"#).unwrap_err();
        assert!(format!("{err:#}").contains("szie"), "{err:#}");
    }

    #[test]
    fn wrong_type_and_non_finite_numbers_name_the_field() {
        let err = parse(r#"{"generate": {"size": "big"}}"#).unwrap_err();
        assert!(format!("{err:#}").contains("generate.size"), "{err:#}");
        let err = parse(r#"{"generate": {"variants": {"rotate": [20, 1e999]}}}"#).unwrap_err();
        assert!(
            format!("{err:#}").contains("generate.variants.rotate"),
            "{err:#}"
        );
    }

    #[test]
    fn out_of_range_values_name_the_field() {
        for (text, field) in [
            (r#"{"generate": {"threshold": 1.5}}"#, "generate.threshold"),
            (r#"{"generate": {"size": 0}}"#, "generate.size"),
            (r#"{"split": {"train": 0.5}}"#, "split.train"),
            (
                r#"{"generate": {"variants": {"elastic": [{"alpha": -1}]}}}"#,
                "elastic[0].alpha",
            ),
            (
                r#"{"generate": {"variants": {"lens": {"centres": []}}}}"#,
                "lens.centres",
            ),
            (
                r#"{"generate": {"variants": {"rotate": [1e-300]}}}"#,
                "generate.variants.rotate[0]",
            ),
            (
                r#"{"generate": {"variants": {"elastic": [{"alpha": 1e-30, "sigma": 4}]}}}"#,
                "generate.variants.elastic[0]",
            ),
            (r#"{"generate": {"size": 100000}}"#, "generate.size"),
            (
                r#"{"generate": {"variants": {"distort_sigma": 1e300}}}"#,
                "generate.variants.distort_sigma",
            ),
            (r#"{"max_image_pixels": 0}"#, "max_image_pixels"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(format!("{err:#}").contains(field), "{text}: {err:#}");
        }
    }
}
