//! Shell completions and man pages, generated from the clap definitions.

use crate::cli::{Cli, CompletionsArgs, ManArgs};
use anyhow::Context;
use clap::CommandFactory;
use std::process::ExitCode;

pub fn completions(a: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "fdgrab", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

pub fn man(a: ManArgs) -> anyhow::Result<ExitCode> {
    let cmd = Cli::command();
    match a.dir {
        None => {
            clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .context("writing the man page")?;
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            write_page(&dir, "fdgrab", cmd.clone())?;
            for sub in cmd.get_subcommands() {
                let name = format!("fdgrab-{}", sub.get_name());
                let page: &'static str = Box::leak(name.clone().into_boxed_str());
                write_page(&dir, &name, sub.clone().name(page))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write_page(dir: &std::path::Path, name: &str, cmd: clap::Command) -> anyhow::Result<()> {
    let path = dir.join(format!("{name}.1"));
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut out)
        .context("rendering a man page")?;
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))
}
