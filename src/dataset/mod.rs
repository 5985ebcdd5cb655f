//! DIARETDB1 on disk: scanning and pairing the source tree (`layout`), the official split lists
//! (`lists`), and a synthetic tree of the same shape for demos and tests (`synth`).

pub mod layout;
pub mod lists;
pub mod synth;
