//! `ptlens-synth`: turns real executions into Intel PT perf.data recordings.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("ptlens-synth: not built yet")
}
