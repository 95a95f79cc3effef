use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "small")]
    preset: String,
}

pub fn run(_a: Args) -> Result<()> {
    anyhow::bail!("train: not wired yet")
}
