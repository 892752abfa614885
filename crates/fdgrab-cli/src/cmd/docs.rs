//! Shell completions and man pages. The pages come from the clap definitions plus
//! what clap does not know: EXIT STATUS (from [`crate::exit::Code`]), ENVIRONMENT and
//! SEE ALSO, and two section-5 pages, for the policy format and the JSON fdgrab prints.

use crate::cli::{Cli, CompletionsArgs, ManArgs};
use crate::exit::{Code, UsageError};
use anyhow::Context;
use clap::CommandFactory;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const POLICY_PAGE: &str = include_str!("../man/fdgrab-policy.5");
const JSON_PAGE: &str = include_str!("../man/fdgrab-json.5");
const ENVIRONMENT: &str = include_str!("../man/environment.roff");
const SEE_ALSO: &str = include_str!("../man/see-also.roff");

pub fn completions(a: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = Cli::command();
    // Rendered first: clap_complete panics on a write error, and a closed stdout is
    // reported as such (exit::StdoutClosed).
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "fdgrab", &mut out);
    write_stdout(&out)
}

pub fn man(a: ManArgs) -> anyhow::Result<ExitCode> {
    let pages = pages()?;
    let Some(dir) = a.dir else {
        let want = match a.page.as_deref() {
            None | Some("fdgrab") => "fdgrab".to_owned(),
            Some(p) => format!("fdgrab-{}", p.strip_prefix("fdgrab-").unwrap_or(p)),
        };
        return match pages.iter().find(|p| p.name == want) {
            Some(p) => write_stdout(&p.roff),
            None => {
                let known: Vec<&str> = pages
                    .iter()
                    .map(|p| p.name.strip_prefix("fdgrab-").unwrap_or(&p.name))
                    .collect();
                Err(UsageError(format!(
                    "no man page '{}' (pages: {})",
                    a.page.unwrap_or_default(),
                    known.join(", ")
                ))
                .into())
            }
        };
    };
    // `--dir .../man1` puts the section-5 pages in the man5 next to it.
    let dir5 = match dir.file_name() {
        Some(n) if n == "man1" => dir.with_file_name("man5"),
        _ => dir.clone(),
    };
    for p in &pages {
        let d: &Path = if p.section == 5 { &dir5 } else { &dir };
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        let path: PathBuf = d.join(format!("{}.{}", p.name, p.section));
        std::fs::write(&path, &p.roff).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One man page.
struct Page {
    name: String,
    section: u8,
    roff: Vec<u8>,
}

/// fdgrab(1), one fdgrab-COMMAND(1) per command, and the section-5 pages.
fn pages() -> anyhow::Result<Vec<Page>> {
    // No `help` subcommand in the pages: it has no page of its own.
    let mut root = Cli::command().disable_help_subcommand(true);
    root.build();
    let mut out = vec![Page {
        name: "fdgrab".into(),
        section: 1,
        roff: render(root.clone())?,
    }];
    for sub in root.get_subcommands() {
        let name = format!("fdgrab-{}", sub.get_name());
        // clap wants a 'static name; the few pages live until fdgrab exits anyway.
        let page: &'static str = Box::leak(name.clone().into_boxed_str());
        out.push(Page {
            name,
            section: 1,
            roff: render(sub.clone().name(page))?,
        });
    }
    for (name, text) in [("fdgrab-policy", POLICY_PAGE), ("fdgrab-json", JSON_PAGE)] {
        out.push(Page {
            name: name.into(),
            section: 5,
            roff: text.as_bytes().to_vec(),
        });
    }
    Ok(out)
}

/// A section-1 page: clap's sections, then EXIT STATUS, ENVIRONMENT and SEE ALSO in
/// place of the `--help` closing text.
fn render(cmd: clap::Command) -> anyhow::Result<Vec<u8>> {
    let has_args = cmd.get_arguments().any(|a| !a.is_hide_set());
    let has_subcommands = cmd.has_subcommands();
    let man = clap_mangen::Man::new(cmd);
    let mut w = Vec::new();
    let r: std::io::Result<()> = (|| {
        man.render_title(&mut w)?;
        man.render_name_section(&mut w)?;
        man.render_synopsis_section(&mut w)?;
        man.render_description_section(&mut w)?;
        if has_args {
            man.render_options_section(&mut w)?;
        }
        if has_subcommands {
            man.render_subcommands_section(&mut w)?;
        }
        write!(w, ".SH \"EXIT STATUS\"\n{}", Code::roff())?;
        write!(w, ".SH ENVIRONMENT\n{ENVIRONMENT}")?;
        write!(w, ".SH \"SEE ALSO\"\n{SEE_ALSO}")?;
        man.render_version_section(&mut w)
    })();
    r.context("rendering a man page")?;
    Ok(w)
}

fn write_stdout(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(crate::exit::stdout_error("writing to stdout"))?;
    Ok(ExitCode::SUCCESS)
}
