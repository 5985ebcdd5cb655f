//! Dataset sources on disk: a synthetic DIARETDB1 v1.1 tree writer (demo data and test fixture).

pub mod synth;
