//! Placeholder until the synthetic writer lands.
use std::path::Path;

pub struct SynthOptions {
    pub count: usize,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
}

pub fn write_synthetic(_root: &Path, _opts: &SynthOptions) -> anyhow::Result<()> {
    anyhow::bail!("synth not merged yet")
}
